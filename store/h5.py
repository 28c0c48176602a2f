"""The H5 store: server-rendered pages for official-account subscribers inside WeChat's browser.

Who the subscriber is comes from the accounts' H5 front door (accounts/h5.py: OAuth2
``snsapi_base`` and the per-appid H5 session); pages here are ``@h5_page`` views that get an
``H5User``. Forms are POST with the CSRF token. The work is done by the same services as the mini-program
API (store/mp.py); their errors render as a friendly page.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import requests
from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from marshmallow import RAISE, Schema, validate
from marshmallow import ValidationError as SchemaValidationError

from accounts import subscribers
from accounts.front_doors import h5 as front_door
from accounts.front_doors.h5 import H5User
from accounts.models import Account
from payments import merchants
from payments import services as payments
from payments.providers.base import PaymentProviderError
from store import catalogue, orders, redemption, services
from store.errors import StoreErrorCode
from store.models import InquiryKind, Order, OrderStatus, Product
from wechat_service import oauth
from wechat_service.errors import (
    InvalidInputError,
    NotFoundError,
    ServiceError,
    error_body,
    register_error_page,
)
from wechat_service.extensions import db, get_redis
from wechat_service.fields import Text
from wechat_service.money import yuan

UNAVAILABLE, EXPIRED = StoreErrorCode.payment_unavailable, StoreErrorCode.link_expired

bp = Blueprint("store_h5", __name__, url_prefix="/h5", template_folder="templates")

PREPAY_CACHE_TTL = 25 * 60  # below the order's 30-minute payment window
ALIPAY_LINK_TTL = 30 * 60
QUERY_THROTTLE = 5  # seconds between active payment queries for one order while its page polls
BRIDGE_KEYS = ("appId", "timeStamp", "nonceStr", "package", "signType", "paySign")
FINAL = {OrderStatus.fulfilled, OrderStatus.refunded, OrderStatus.closed}
STATUS_LABELS = {
    "pending_payment": "待支付",
    "paid": "已支付",
    "fulfilling": "已支付，办理中",
    "fulfilled": "已完成",
    "fulfilment_failed": "办理失败，正在退款",
    "refunding": "退款中",
    "refunded": "已退款",
    "closed": "已关闭",
}
PROVIDER_LABELS = {"wechatpay_v3": "微信支付", "wechatpay_v2": "微信支付", "alipay": "支付宝"}
INQUIRY_LABELS = {"balance": "话费余额", "data": "流量", "bill": "账单", "points": "积分"}
# Services written for the API answer some errors in English; subscribers read Chinese.
FRIENDLY = {
    "phone_required": "购买前请先绑定手机号",
    "not_on_sale": "该商品暂不可购买",
    "sold_out": "该商品已售罄",
    "limit_reached": "已达到该商品的限购数量",
    "conflict": "订单信息有变，请返回重新下单",
    "not_found": "页面不存在或已失效",
    "upstream_unavailable": "服务暂时不可用，请稍后再试",
}
BY_STATUS = {
    400: "请求有误",
    401: "请重新进入页面",
    403: "无法访问",
    404: "页面不存在",
    429: "操作太频繁，请稍后再试",
}
CJK = re.compile(r"[\u4e00-\u9fff]")


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {"yuan": yuan, "status_label": lambda s: STATUS_LABELS.get(str(s), str(s))}


# -- sign-in: the accounts' H5 front door (accounts/h5.py) ---------------------------------------

h5_page = front_door.page(wants_json=lambda: _wants_json())


@bp.get("/<appid>/login")
def login(appid: str) -> ResponseReturnValue:
    """Start (or restart) OAuth; menus may link here with ``next``."""
    return front_door.begin_login(front_door.h5_account(appid), request.args.get("next"))


@bp.get("/<appid>/oauth/callback")
def oauth_callback(appid: str) -> ResponseReturnValue:
    return front_door.finish_login(appid)


# -- rendering and errors ------------------------------------------------------------------------


def _wants_json() -> bool:
    return request.path.endswith("/status")


def _page_url() -> str:
    """The page's URL as the browser has it (what the JS-SDK signature must cover)."""
    return current_app.config["PUBLIC_BASE_URL"] + request.full_path.rstrip("?")


def friendly(exc: ServiceError) -> str:
    if CJK.search(exc.message):
        return exc.message
    return FRIENDLY.get(exc.code) or BY_STATUS.get(exc.status, "操作未能完成，请稍后再试")


def _render(account: Account, template: str, status: int = 200, **context: Any) -> ResponseReturnValue:
    if context.get("error") is not None:
        context["error_text"] = friendly(context["error"])
    context.setdefault(
        "wx_config", oauth.jssdk_config_or_none(account.appid, account.app_secret, _page_url())
    )
    return render_template(f"store/{template}", account=account, appid=account.appid, **context), status


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> ResponseReturnValue:
    db.session.rollback()
    if _wants_json():
        return jsonify(error_body(exc.code, exc.message, exc.fields)), exc.status
    return _message_page(exc.status, friendly(exc))


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    return _message_page(400, "页面已过期，请返回刷新后再试")


def http_error_page(status: int) -> ResponseReturnValue:
    """An HTTP error (unknown page, wrong method…) on an /h5 path, as a page in Chinese."""
    return _message_page(status, BY_STATUS.get(status, "操作未能完成，请稍后再试"))


# Unknown /h5 URLs and wrong methods never reach this blueprint's handlers: the app's do the work.
register_error_page("/h5/", http_error_page)


def _message_page(status: int, message: str) -> ResponseReturnValue:
    appid = (request.view_args or {}).get("appid")
    titles = {**BY_STATUS, 409: "无法完成", 410: "链接已失效"}
    return render_template(
        "store/message.html",
        appid=appid,
        account=None,
        title=titles.get(status, "暂时无法完成"),
        message=message,
        wx_config=None,
    ), status


def _form(schema: Schema) -> dict[str, Any]:
    raw = {k: v for k, v in request.form.items() if k != "csrf_token"}
    try:
        return schema.load(raw)
    except SchemaValidationError as exc:
        fields_ = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise InvalidInputError("请检查填写的内容", fields=fields_) from None


# -- catalogue and ordering ----------------------------------------------------------------------


@bp.get("/<appid>/")
@h5_page
def index(user: H5User) -> ResponseReturnValue:
    products = [
        p for p in db.session.scalars(catalogue.visible_products(user.account_id)) if catalogue.on_sale(p)
    ]
    return _render(
        user.account,
        "catalogue.html",
        products=products,
        binding=services.binding_of(user.account_id, user.subscriber_id),
        mask=services.mask_phone,
    )


@bp.get("/<appid>/products/<int:product_id>")
@h5_page
def product(user: H5User, product_id: int) -> ResponseReturnValue:
    item = catalogue.product_for(user.account_id, product_id)
    return _render(user.account, "product.html", product=item, on_sale=catalogue.on_sale(item))


class CheckoutSchema(Schema):
    class Meta:
        unknown = RAISE

    client_key = Text(required=True, validate=validate.Length(min=8, max=64))
    provider = Text(required=True, validate=validate.OneOf(merchants.PROVIDERS))
    coupon = Text(load_default="", validate=validate.Length(max=32))


def _providers(account_id: int) -> dict[str, str]:
    """The payment methods the account has a merchant for: one WeChat Pay (v3 first), Alipay."""
    out: dict[str, str] = {}
    for provider in merchants.providers_of(account_id):
        label = PROVIDER_LABELS.get(provider, provider)
        if label not in out.values():
            out[provider] = label
    return out


@bp.route("/<appid>/products/<int:product_id>/checkout", methods=["GET", "POST"])
@h5_page
def checkout(user: H5User, product_id: int) -> ResponseReturnValue:
    item = catalogue.product_for(user.account_id, product_id)
    providers = _providers(user.account_id)
    context: dict[str, Any] = {
        "product": item,
        "providers": providers,
        "on_sale": catalogue.on_sale(item),
        "client_key": secrets.token_urlsafe(18),  # a double submit is the same order
        "form": {},
    }
    if request.method == "GET":
        return _render(user.account, "checkout.html", **context)
    try:
        data = _form(CheckoutSchema())
        context.update(form=data, client_key=data["client_key"])
        if data["provider"] not in providers:
            raise InvalidInputError("请选择支付方式", fields={"provider": ["unavailable"]})
        order = orders.create_order(
            user.account_id,
            user.subscriber_id,
            item.id,
            data["client_key"],
            data["provider"],
            coupon_code=data["coupon"].strip() or None,
        )
        db.session.commit()
    except ServiceError as exc:
        db.session.rollback()
        return _render(user.account, "checkout.html", exc.status, error=exc, **context)
    if order.status is OrderStatus.pending_payment:
        return redirect(url_for(".pay", appid=user.account.appid, order_id=order.id), 303)
    return redirect(url_for(".order_detail", appid=user.account.appid, order_id=order.id), 303)


def _own_order(user: H5User, order_id: int) -> Order:
    """The subscriber's own order in this account; anyone else's is not found."""
    order = orders.order_for(user.account_id, order_id)
    if order.subscriber_id != user.subscriber_id:
        raise NotFoundError("订单不存在")
    return order


def _product_of(order: Order) -> Product:
    return catalogue.product_for(order.account_id, order.product_id)


def _in_wechat() -> bool:
    return "MicroMessenger" in (request.user_agent.string or "")


def _jsapi_params(user: H5User, order: Order, item: Product) -> dict[str, str]:
    """WeixinJSBridge's getBrandWCPayRequest parameters: prepaid once, reused while the page is
    reloaded (a second prepay with a new expiry would be refused as a different order)."""
    conn = get_redis()
    key = f"h5:jsapi:{order.id}"
    cached = conn.get(key)
    if cached:
        return json.loads(cached)
    openid = subscribers.subscriber_by_id(user.account_id, user.subscriber_id).openid
    try:
        params = payments.prepay(order, openid, item.name, client_ip=request.remote_addr or "127.0.0.1")
    except NotFoundError:
        raise ServiceError("该公众号暂未开通微信支付", code=UNAVAILABLE, status=409) from None
    except (PaymentProviderError, requests.RequestException):
        raise ServiceError("微信支付暂时不可用，请稍后再试", code=UNAVAILABLE, status=502) from None
    db.session.commit()  # the prepay_id
    bridge = {k: str(params[k]) for k in BRIDGE_KEYS}
    conn.set(key, json.dumps(bridge), ex=PREPAY_CACHE_TTL)
    return bridge


def _alipay_link(account: Account, order: Order) -> str:
    """A link that works in any browser, without the WeChat session: it carries a signed token
    for this one order."""
    token = _alipay_signer().dumps({"o": order.id, "a": order.account_id})
    path = url_for(".alipay_redirect", appid=account.appid, order_id=order.id, t=token)
    return current_app.config["PUBLIC_BASE_URL"] + path


def _alipay_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="h5-alipay")


def _alipay_url(order: Order, item: Product) -> str:
    """Alipay's cashier, sending the browser back to our (session-less, signed) result page."""
    token = _alipay_signer().dumps({"o": order.id, "a": order.account_id})
    appid = (request.view_args or {})["appid"]
    back = current_app.config["PUBLIC_BASE_URL"] + url_for(
        ".alipay_done", appid=appid, order_id=order.id, t=token
    )
    try:
        return payments.prepay(order, "", item.name, return_url=back)["url"]
    except NotFoundError:
        raise ServiceError("该公众号暂未开通支付宝支付", code=UNAVAILABLE, status=409) from None


@bp.get("/<appid>/orders/<int:order_id>/pay")
@h5_page
def pay(user: H5User, order_id: int) -> ResponseReturnValue:
    order = _own_order(user, order_id)
    if order.status is not OrderStatus.pending_payment:
        return redirect(url_for(".order_detail", appid=user.account.appid, order_id=order.id), 303)
    item = _product_of(order)
    if merchants.checkout_of(order.provider) == "redirect":
        if _in_wechat():  # Alipay's pages do not open inside WeChat: continue in a browser
            return _render(
                user.account,
                "alipay_in_wechat.html",
                order=order,
                product=item,
                link=_alipay_link(user.account, order),
            )
        return redirect(_alipay_url(order, item), 302)
    params = _jsapi_params(user, order, item)
    return _render(user.account, "pay.html", order=order, product=item, pay_params=params)


@bp.get("/<appid>/orders/<int:order_id>/alipay")
def alipay_redirect(appid: str, order_id: int) -> ResponseReturnValue:
    """Opened from the system browser (no WeChat session there): the signed token names the order."""
    account = front_door.h5_account(appid)
    try:
        claim = _alipay_signer().loads(request.args.get("t", ""), max_age=ALIPAY_LINK_TTL)
    except BadSignature:  # also SignatureExpired
        claim = None
    if claim != {"o": order_id, "a": account.id}:
        raise ServiceError("支付链接无效或已过期，请回到微信重新下单", code=EXPIRED, status=410)
    order = orders.order_for(account.id, order_id)
    if merchants.checkout_of(order.provider) != "redirect":
        raise NotFoundError("订单不存在")
    if order.status is not OrderStatus.pending_payment:
        return _message_page(
            409, f"该订单{STATUS_LABELS.get(order.status.value, order.status.value)}，无需再次支付"
        )
    item = _product_of(order)
    if _in_wechat():
        return _render(
            account, "alipay_in_wechat.html", order=order, product=item, link=_alipay_link(account, order)
        )
    return redirect(_alipay_url(order, item), 302)


@bp.get("/<appid>/orders/<int:order_id>/alipay/done")
def alipay_done(appid: str, order_id: int) -> ResponseReturnValue:
    """Where Alipay sends the system browser back: the order's state, and the way back to WeChat.
    A notification may not have arrived yet, so a pending order is asked about once."""
    account = front_door.h5_account(appid)
    try:
        claim = _alipay_signer().loads(request.args.get("t", ""), max_age=ALIPAY_LINK_TTL)
    except BadSignature:
        claim = None
    if claim != {"o": order_id, "a": account.id}:
        raise ServiceError("链接无效或已过期，请回到微信查看订单", code=EXPIRED, status=410)
    order = orders.order_for(account.id, order_id)
    if order.status is OrderStatus.pending_payment:
        try:
            payments.reconcile_pending(order)
            db.session.commit()
        except Exception:  # noqa: BLE001 - the notification or the sweep will settle it
            db.session.rollback()
        db.session.refresh(order)
    label = STATUS_LABELS.get(order.status.value, order.status.value)
    return _message_page(200, f"订单{order.out_trade_no}：{label}。请返回微信，在「我的订单」查看办理结果。")


@bp.get("/<appid>/orders/<int:order_id>")
@h5_page
def order_detail(user: H5User, order_id: int) -> ResponseReturnValue:
    order = _own_order(user, order_id)
    return _render(
        user.account,
        "result.html",
        order=order,
        product=_product_of(order),
        final=order.status in FINAL,
        history=orders.history(order.id),
    )


@bp.get("/<appid>/orders/<int:order_id>/status")
@h5_page
def order_status(user: H5User, order_id: int) -> ResponseReturnValue:
    """Polled by the result page. While the order waits for its payment, WeChat Pay or Alipay is
    asked now and then, so a lost notification does not leave the subscriber waiting."""
    order = _own_order(user, order_id)
    if order.status is OrderStatus.pending_payment and get_redis().set(
        f"h5:query:{order.id}", 1, nx=True, ex=QUERY_THROTTLE
    ):
        try:
            payments.reconcile_pending(order)
            db.session.commit()
        except (PaymentProviderError, ServiceError, requests.RequestException):
            db.session.rollback()  # the notification, or the next poll, will tell
        db.session.refresh(order)
    return jsonify(
        {
            "id": order.id,
            "status": order.status.value,
            "label": STATUS_LABELS.get(order.status.value, order.status.value),
            "final": order.status in FINAL,
            "amount_fen": order.amount_fen,
        }
    )


@bp.get("/<appid>/orders")
@h5_page
def my_orders(user: H5User) -> ResponseReturnValue:
    rows = list(
        db.session.scalars(
            orders.search(user.account_id).where(Order.subscriber_id == user.subscriber_id).limit(50)
        )
    )
    names = {p.id: p.name for p in db.session.scalars(catalogue.visible_products(user.account_id))}
    return _render(user.account, "orders.html", orders=rows, names=names)


# -- inquiry, phone binding, redeem codes --------------------------------------------------------


@bp.get("/<appid>/inquiry")
@h5_page
def inquiry_home(user: H5User) -> ResponseReturnValue:
    binding = services.binding_of(user.account_id, user.subscriber_id)
    return _render(
        user.account,
        "inquiry.html",
        kinds=INQUIRY_LABELS,
        phone=services.mask_phone(binding.phone) if binding else None,
        result=None,
    )


@bp.get("/<appid>/inquiry/<any(balance, data, bill, points):kind>")
@h5_page
def inquiry(user: H5User, kind: str) -> ResponseReturnValue:
    result = services.inquire(user.account_id, user.subscriber_id, InquiryKind(kind), "h5")
    db.session.commit()  # the inquiry ledger row
    binding = services.binding_of(user.account_id, user.subscriber_id)
    status = {"unbound": 409, "failed": 503}.get(result.outcome.value, 200)
    return _render(
        user.account,
        "inquiry.html",
        status,
        kinds=INQUIRY_LABELS,
        kind=kind,
        phone=services.mask_phone(binding.phone) if binding else None,
        result=result,
    )


class PhoneSmsSchema(Schema):
    class Meta:
        unknown = RAISE

    phone = Text(required=True, validate=validate.Length(min=5, max=20))
    next = Text(load_default="", validate=validate.Length(max=512))


class PhoneVerifySchema(Schema):
    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Regexp(r"^\s*\d{6}\s*$", error="6 位数字"))
    next = Text(load_default="", validate=validate.Length(max=512))


def _phone_page(user: H5User, status: int = 200, **context: Any) -> ResponseReturnValue:
    binding = services.binding_of(user.account_id, user.subscriber_id)
    context.setdefault("next", request.values.get("next", ""))
    context.setdefault("pending", services.has_pending_binding(user.account_id, user.subscriber_id))
    return _render(
        user.account,
        "phone.html",
        status,
        phone=services.mask_phone(binding.phone) if binding else None,
        **context,
    )


@bp.get("/<appid>/phone")
@h5_page
def phone(user: H5User) -> ResponseReturnValue:
    return _phone_page(user)


@bp.post("/<appid>/phone/sms")
@h5_page
def phone_sms(user: H5User) -> ResponseReturnValue:
    try:
        data = _form(PhoneSmsSchema())
        sent = services.start_binding(user.account_id, user.subscriber_id, data["phone"])
    except ServiceError as exc:
        return _phone_page(user, exc.status, error=exc)
    return _phone_page(user, sent=sent, pending=True)


@bp.post("/<appid>/phone/verify")
@h5_page
def phone_verify(user: H5User) -> ResponseReturnValue:
    try:
        data = _form(PhoneVerifySchema())
        services.confirm_binding(user.account_id, user.subscriber_id, data["code"].strip())
        db.session.commit()
    except ServiceError as exc:
        db.session.rollback()
        return _phone_page(user, exc.status, error=exc)
    flash("手机号绑定成功", "ok")
    target = data["next"] or url_for(".phone", appid=user.account.appid)
    return redirect(front_door.safe_next(user.account.appid, target), 303)


class RedeemSchema(Schema):
    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Length(min=4, max=64))


@bp.route("/<appid>/redeem", methods=["GET", "POST"])
@h5_page
def redeem(user: H5User) -> ResponseReturnValue:
    if request.method == "GET":
        return _render(user.account, "redeem.html")
    try:
        data = _form(RedeemSchema())
        result = redemption.redeem(user.account_id, user.subscriber_id, data["code"], "h5")
        db.session.commit()
    except ServiceError as exc:
        db.session.rollback()
        return _render(user.account, "redeem.html", exc.status, error=exc)
    return _render(user.account, "redeem.html", result=result)


@bp.get("/<appid>/<path:rest>")
def not_found(appid: str, rest: str) -> ResponseReturnValue:
    """Unknown store URLs get the store's own page: a routing 404 never reaches a blueprint's
    error handler (it would answer the app's JSON)."""
    raise NotFoundError("页面不存在")
