"""The H5 store pages in-process, against the simulator: OAuth2 snsapi_base (state bound to the
session, no open redirect, single-use codes), every page, checkout with a coupon, WeChat Pay's
JSAPI parameters, Alipay inside and outside WeChat, phone binding, redeem codes, other accounts'
orders refused, and a JS-SDK signature checked against the simulator's ticket."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask

from accounts.front_doors.h5 import safe_next
from accounts.models import Subscriber
from store import catalogue, coupons, redemption
from store.models import Order, OrderStatus, PhoneBinding
from tests import factories
from tests.console_helpers import page_token
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db

WECHAT_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2f) NetType/WIFI Language/zh_CN"
)
SAFARI_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)


def _phone() -> str:
    return f"139{secrets.randbelow(10**7):07d}1"[:11]


class H5:
    """A subscriber's WeChat browser: the test client for our pages, requests for the simulator."""

    def __init__(self, app: Flask, simulator: str, appid: str, ua: str = WECHAT_UA) -> None:
        self.client = app.test_client()
        self.sim, self.appid, self.ua = simulator, appid, ua
        self.client.environ_base["HTTP_USER_AGENT"] = ua

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict[str, Any], token_from: str | None = None) -> Any:
        token = page_token(self.get(token_from or path).get_data(as_text=True))
        return self.client.post(path, data={**data, "csrf_token": token})

    def authorize(self, resp: Any, openid: str | None = None, appid: str | None = None) -> str:
        """Follow our redirect to WeChat's authorize page; WeChat answers with the callback URL."""
        assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
        location = resp.headers["Location"]
        assert location.startswith(f"{self.sim}/wechat-open/connect/oauth2/authorize?")
        assert location.endswith("#wechat_redirect")
        url = location.split("#", 1)[0] + (f"&openid={openid}" if openid else "")
        answer = requests.get(url, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, answer.text
        callback = urlsplit(answer.headers["Location"])
        assert (
            callback.netloc == "service.test" and callback.path == f"/h5/{appid or self.appid}/oauth/callback"
        )
        return f"{callback.path}?{callback.query}"

    def login(self, openid: str, path: str | None = None) -> Any:
        """Through OAuth to ``path``; answers the page we come back to."""
        path = path or f"/h5/{self.appid}/"
        back = self.get(self.authorize(self.get(path), openid, path.split("/")[2]))
        assert back.status_code == 302 and back.headers["Location"] == path, back.get_data(as_text=True)[:300]
        return self.get(path)


@pytest.fixture
def shop(app: Flask, simulator: str) -> dict[str, Any]:
    shop = factories.shop(
        simulator,
        kind="service",
        pay=["wechatpay_v3", "alipay"],
        product={"code": "t30", "price_fen": 2990, "face_value_fen": 3000, "stock": 10},
    )
    coupons.add_coupon(
        shop["account"].id,
        code="SAVE5",
        name="立减 5 元",
        kind="fixed",
        value=500,
        valid_from=utcnow() - timedelta(days=1),
        valid_until=utcnow() + timedelta(days=1),
    )
    db.session.commit()
    return {**shop, "appid": shop["fields"]["appid"]}


def _bound(shop: dict[str, Any], openid: str) -> int:
    sub = factories.subscriber(shop["account"].id, openid, _phone())
    db.session.commit()
    return sub.id


# -- OAuth ---------------------------------------------------------------------------------------


def test_oauth_signs_in_and_comes_back(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    first = h5.get(f"/h5/{appid}/orders")
    query = parse_qs(urlsplit(first.headers["Location"].split("#")[0]).query)
    assert query["appid"] == [appid] and query["scope"] == ["snsapi_base"]
    assert query["response_type"] == ["code"] and len(query["state"][0]) >= 16
    assert query["redirect_uri"] == [f"http://service.test/h5/{appid}/oauth/callback"]
    callback = h5.authorize(first, "oH5LOGIN00000001")
    assert parse_qs(urlsplit(callback).query)["state"] == query["state"]
    back = h5.get(callback)
    assert back.status_code == 302 and back.headers["Location"] == f"/h5/{appid}/orders"
    page = h5.get(f"/h5/{appid}/orders")
    assert page.status_code == 200 and "还没有订单" in page.get_data(as_text=True)
    sub = db.session.scalar(sa.select(Subscriber).where(Subscriber.openid == "oH5LOGIN00000001"))
    assert sub is not None and sub.account_id == shop["account"].id and sub.last_interaction_at is None
    # The code was used once; the simulator says so.
    stats = requests.get(f"{simulator}/_sim/accounts/{appid}/oauth", timeout=5).json()["stats"]
    assert stats["code_exchanges"] == 1


def test_state_is_bound_to_the_session_and_single_use(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    victim, attacker = H5(app, simulator, appid), H5(app, simulator, appid)
    # The attacker's own callback (code + state of the attacker's session) planted on the victim.
    planted = attacker.authorize(attacker.get(f"/h5/{appid}/"), "oATTACKER0000001")
    resp = victim.get(planted)
    assert resp.status_code == 400 and "登录状态已失效" in resp.get_data(as_text=True)
    assert victim.get(f"/h5/{appid}/").status_code == 302  # still signed out
    # No state, or a made-up one.
    callback = victim.authorize(victim.get(f"/h5/{appid}/"), "oVICTIM000000001")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert victim.get(f"/h5/{appid}/oauth/callback?code={code}").status_code == 400
    assert victim.get(f"/h5/{appid}/oauth/callback?code={code}&state=forged").status_code == 400
    # The real one works once; replaying it is refused (the state is gone).
    assert victim.get(callback).status_code == 302
    replay = victim.get(callback)
    assert replay.status_code == 400 and "登录状态已失效" in replay.get_data(as_text=True)


def test_bad_used_and_expired_codes_get_an_error_page(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)

    def with_state(code: str) -> Any:
        login = h5.get(f"/h5/{appid}/login")
        state = parse_qs(urlsplit(login.headers["Location"].split("#")[0]).query)["state"][0]
        return h5.get(f"/h5/{appid}/oauth/callback?code={code}&state={state}")

    issued = requests.post(
        f"{simulator}/_sim/accounts/{appid}/oauth-codes", json={"openid": "oCODES0000000001"}, timeout=5
    ).json()["code"]
    assert with_state(issued).status_code == 302
    used = with_state(issued)
    assert used.status_code == 400 and "授权码已使用" in used.get_data(as_text=True)
    bad = with_state("not-a-code")
    assert bad.status_code == 400 and "授权码无效" in bad.get_data(as_text=True)
    old = requests.post(
        f"{simulator}/_sim/accounts/{appid}/oauth-codes", json={"age": 600}, timeout=5
    ).json()["code"]
    assert with_state(old).status_code == 400
    missing = with_state("")
    assert missing.status_code == 400 and "未获得微信授权" in missing.get_data(as_text=True)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/h5/",
        "//evil.example/h5/",
        "/\\evil.example",
        "/h5/wxother/",
        "/h5/{appid}/../../console/",
        "javascript:alert(1)",
        "/h5/{appid}/\r\nLocation: https://evil.example/",
    ],
)
def test_return_paths_outside_the_store_are_refused(app: Flask, shop: dict[str, Any], target: str) -> None:
    appid = shop["appid"]
    with app.test_request_context():
        assert safe_next(appid, target.format(appid=appid)) == f"/h5/{appid}/"
        assert safe_next(appid, f"/h5/{appid}/orders?x=1") == f"/h5/{appid}/orders?x=1"


def test_login_with_an_outside_next_lands_on_the_catalogue(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    callback = h5.authorize(h5.get(f"/h5/{appid}/login?next=https://evil.example/steal"), "oNEXT00000000001")
    back = h5.get(callback)
    assert back.status_code == 302 and back.headers["Location"] == f"/h5/{appid}/"


def test_unknown_disabled_and_mini_program_accounts(app: Flask, create_account: Any, simulator: str) -> None:
    from accounts import services as account_services
    from accounts.models import AccountStatus

    assert app.test_client().get("/h5/wxnosuchaccount/").status_code == 404
    _, mp_fields, _ = create_account("plain", kind="mini_program")
    assert app.test_client().get(f"/h5/{mp_fields['appid']}/").status_code == 404
    _, fields, _ = create_account("plain")
    account_services.set_account_status(fields["appid"], AccountStatus.disabled)
    db.session.commit()
    resp = app.test_client().get(f"/h5/{fields['appid']}/")
    assert resp.status_code == 403 and "已停用" in resp.get_data(as_text=True)


# -- pages ---------------------------------------------------------------------------------------


def test_every_page_renders(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid, pid = shop["appid"], shop["product"].id
    _bound(shop, "oPAGES0000000001")
    h5 = H5(app, simulator, appid)
    home = h5.login("oPAGES0000000001").get_data(as_text=True)
    assert "30 元话费" in home and "¥29.90" in home and "139****" in home
    for path, expected in [
        (f"/h5/{appid}/products/{pid}", "立即购买"),
        (f"/h5/{appid}/products/{pid}/checkout", "提交订单"),
        (f"/h5/{appid}/orders", "还没有订单"),
        (f"/h5/{appid}/inquiry", "查话费余额"),
        (f"/h5/{appid}/inquiry/balance", "当前话费余额"),
        (f"/h5/{appid}/inquiry/data", "剩余流量"),
        (f"/h5/{appid}/phone", "已绑定"),
        (f"/h5/{appid}/redeem", "立即兑换"),
    ]:
        resp = h5.get(path)
        body = resp.get_data(as_text=True)
        assert resp.status_code == 200, (path, body[:300])
        assert expected in body and 'id="wx-config"' in body and "store.css" in body, path
    assert h5.get(f"/h5/{appid}/products/999999").status_code == 404
    assert h5.get(f"/h5/{appid}/orders/99999999999").status_code == 404
    missing = h5.get(f"/h5/{appid}/no/such/page")
    assert missing.status_code == 404 and "返回商城" in missing.get_data(as_text=True)
    wrong_method = h5.client.put(f"/h5/{appid}/orders")  # an HTML page in Chinese, not JSON
    assert wrong_method.status_code == 405 and wrong_method.mimetype == "text/html"
    assert "暂时无法完成" in wrong_method.get_data(as_text=True)


def test_inquiry_without_a_phone_asks_to_bind(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    h5.login("oUNBOUND00000001")
    resp = h5.get(f"/h5/{appid}/inquiry/points")
    body = resp.get_data(as_text=True)
    assert resp.status_code == 409 and "请先绑定手机号" in body
    assert f"/h5/{appid}/phone?next=/h5/{appid}/inquiry/points" in body.replace("%2F", "/")


def test_jssdk_signature_verifies_with_the_ticket(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    body = h5.login("oJSSDK0000000001", f"/h5/{appid}/inquiry").get_data(as_text=True)
    config = json.loads(re.search(r'id="wx-config">(.*?)</script>', body, re.S).group(1))
    oauth = requests.get(f"{simulator}/_sim/accounts/{appid}/oauth", timeout=5).json()
    ticket = oauth["jsapi_ticket"]
    url = f"http://service.test/h5/{appid}/inquiry"
    plain = f"jsapi_ticket={ticket}&noncestr={config['nonceStr']}&timestamp={config['timestamp']}&url={url}"
    # SHA-1 is what WeChat defines the JS-SDK signature to be.
    assert config["signature"] == hashlib.sha1(plain.encode()).hexdigest()  # noqa: S324
    assert config["appId"] == appid and "chooseWXPay" in config["jsApiList"]
    h5.get(f"/h5/{appid}/redeem")
    h5.get(f"/h5/{appid}/orders")
    # One getticket for three pages: the ticket is cached per account in Redis.
    stats = requests.get(f"{simulator}/_sim/accounts/{appid}/oauth", timeout=5).json()["stats"]
    assert stats["getticket"] == 1


# -- ordering and paying -------------------------------------------------------------------------


def _checkout(h5: H5, shop: dict[str, Any], **form: Any) -> Any:
    path = f"/h5/{shop['appid']}/products/{shop['product'].id}/checkout"
    page = h5.get(path).get_data(as_text=True)
    client_key = re.search(r'name="client_key" value="([^"]+)"', page).group(1)
    return h5.post(path, {"client_key": client_key, "provider": "wechatpay_v3", "coupon": "", **form})


def test_checkout_with_a_coupon_then_pay_with_wechat(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    sub_id = _bound(shop, "oBUYER0000000001")
    h5 = H5(app, simulator, appid)
    h5.login("oBUYER0000000001")
    resp = _checkout(h5, shop, coupon="save5")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    order = db.session.scalar(sa.select(Order).where(Order.subscriber_id == sub_id))
    assert resp.headers["Location"] == f"/h5/{appid}/orders/{order.id}/pay"
    assert (order.list_price_fen, order.discount_fen, order.amount_fen) == (2990, 500, 2490)

    page = h5.get(resp.headers["Location"]).get_data(as_text=True)
    assert "¥24.90" in page and "-¥5.00" in page and "getBrandWCPayRequest" in page
    params = json.loads(re.search(r'id="pay-params">(.*?)</script>', page, re.S).group(1))
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert params["appId"] == appid and params["signType"] == "RSA"
    message = "".join(f"{params[k]}\n" for k in ("appId", "timeStamp", "nonceStr", "package"))
    shop["public_key"].verify(
        base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    again = h5.get(f"/h5/{appid}/orders/{order.id}/pay").get_data(as_text=True)
    assert params["paySign"] in again  # prepaid once: a reload shows the same parameters

    # The WeChat client refuses a tampered paySign and another subscriber; the real one pays.
    pay = f"{simulator}/_sim/wechatpay/pay"
    forged = {**params, "paySign": base64.b64encode(b"x" * 256).decode()}
    assert requests.post(pay, json={"jsapi": forged, "deliver": False}, timeout=10).status_code == 401
    other = {"jsapi": params, "openid": "oSOMEONEELSE0001", "deliver": False}
    assert requests.post(pay, json=other, timeout=10).status_code == 403
    note = requests.post(
        pay, json={"jsapi": params, "openid": "oBUYER0000000001", "deliver": False}, timeout=10
    ).json()
    notified = app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify",
        headers=note["headers"],
        data=note["body"].encode(),
    )
    assert notified.status_code == 204
    status = h5.get(f"/h5/{appid}/orders/{order.id}/status").get_json()
    assert status == {
        "id": order.id,
        "status": "fulfilling",
        "label": "已支付，办理中",
        "final": False,
        "amount_fen": 2490,
    }
    result = h5.get(f"/h5/{appid}/orders/{order.id}").get_data(as_text=True)
    assert "已支付，办理中" in result and 'data-status="fulfilling"' in result
    listing = h5.get(f"/h5/{appid}/orders").get_data(as_text=True)
    assert "30 元话费" in listing and "¥24.90" in listing
    # Paid: the pay page sends the subscriber to the result page.
    assert h5.get(f"/h5/{appid}/orders/{order.id}/pay").headers["Location"].endswith(f"/orders/{order.id}")


def test_pending_order_status_asks_wechat_pay(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    """The notification never came: the polling result page finds the payment by query."""
    appid = shop["appid"]
    _bound(shop, "oQUERY0000000001")
    h5 = H5(app, simulator, appid)
    h5.login("oQUERY0000000001")
    pay_path = _checkout(h5, shop).headers["Location"]
    params = json.loads(
        re.search(r'id="pay-params">(.*?)</script>', h5.get(pay_path).get_data(as_text=True), re.S).group(1)
    )
    order_id = int(pay_path.split("/")[-2])
    assert h5.get(f"/h5/{appid}/orders/{order_id}/status").get_json()["status"] == "pending_payment"
    requests.post(f"{simulator}/_sim/wechatpay/pay", json={"jsapi": params, "deliver": False}, timeout=10)
    app.extensions["redis"].delete(f"h5:query:{order_id}")  # past the throttle
    assert h5.get(f"/h5/{appid}/orders/{order_id}/status").get_json()["status"] == "fulfilling"


def test_checkout_problems_render_on_the_page(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    h5.login("oNOPHONE00000001")
    no_phone = _checkout(h5, shop)
    body = no_phone.get_data(as_text=True)
    assert no_phone.status_code == 409 and 'id="bind-phone"' in body and "购买前请先绑定手机号" in body
    _bound(shop, "oNOPHONE00000001")
    bad_coupon = _checkout(h5, shop, coupon="NOSUCH")
    assert bad_coupon.status_code == 409 and "优惠券无效或已过期" in bad_coupon.get_data(as_text=True)
    bad_provider = _checkout(h5, shop, provider="bitcoin")
    assert bad_provider.status_code == 400 and "请检查填写的内容" in bad_provider.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0
    db.session.expire_all()
    assert catalogue.product_for(shop["account"].id, shop["product"].id).stock == 10  # rolled back
    # No CSRF token: a friendly page, nothing created.
    path = f"/h5/{appid}/products/{shop['product'].id}/checkout"
    forged = h5.client.post(path, data={"client_key": "k" * 16, "provider": "wechatpay_v3"})
    assert forged.status_code == 400 and "页面已过期" in forged.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0


def test_alipay_in_wechat_explains_and_the_browser_goes_to_alipay(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    _bound(shop, "oALIPAY000000001")
    h5 = H5(app, simulator, appid)
    h5.login("oALIPAY000000001")
    pay_path = _checkout(h5, shop, provider="alipay").headers["Location"]
    page = h5.get(pay_path)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "在浏览器打开" in body and "点击右上角" in body
    link = re.search(r'id="alipay-link" href="([^"]+)"', body).group(1).replace("&amp;", "&")
    assert link.startswith(f"http://service.test/h5/{appid}/orders/") and "/alipay?t=" in link
    gateway = f"{simulator}/alipay/gateway.do?"

    # The system browser has no WeChat session: the signed link alone takes it to Alipay.
    browser = H5(app, simulator, appid, ua=SAFARI_UA)
    path = link[len("http://service.test") :]
    out = browser.get(path)
    assert out.status_code == 302 and out.headers["Location"].startswith(gateway)
    query = parse_qs(urlsplit(out.headers["Location"]).query)
    assert query["method"] == ["alipay.trade.wap.pay"] and query["app_id"] == [shop["alipay_app_id"]]
    assert json.loads(query["biz_content"][0])["total_amount"] == "29.90"
    assert requests.get(out.headers["Location"], timeout=10).status_code == 200  # the cashier opens
    # The same link still inside WeChat explains again; a tampered one is refused.
    assert "在浏览器打开" in h5.get(path).get_data(as_text=True)
    tampered = browser.get(path[:-3] + "xyz")
    assert tampered.status_code == 410 and "支付链接无效" in tampered.get_data(as_text=True)
    # Signed in, outside WeChat: straight to Alipay.
    outside = H5(app, simulator, appid, ua=SAFARI_UA)
    outside.login("oALIPAY000000001", f"/h5/{appid}/orders")
    direct = outside.get(pay_path)
    assert direct.status_code == 302 and direct.headers["Location"].startswith(gateway)
    # Afterwards Alipay sends the browser back to our signed result page (no session needed),
    # which asks Alipay once when the notification has not arrived yet.
    back = query["return_url"][0]
    assert back.startswith(f"http://service.test/h5/{appid}/orders/") and "/alipay/done?t=" in back
    requests.post(
        f"{simulator}/_sim/alipay/pay",
        json={"out_trade_no": json.loads(query["biz_content"][0])["out_trade_no"], "deliver": False},
        timeout=10,
    ).raise_for_status()
    done = browser.get(back[len("http://service.test") :])
    assert done.status_code == 200 and "请返回微信" in done.get_data(as_text=True)
    assert "待支付" not in done.get_data(as_text=True)  # paid: found by the query
    forged = browser.get(back[len("http://service.test") :][:-3] + "xyz")
    assert forged.status_code == 410


def test_pages_refuse_other_accounts_and_subscribers_orders(
    app: Flask, shop: dict[str, Any], create_account: Any, simulator: str
) -> None:
    appid = shop["appid"]
    _bound(shop, "oOWNER0000000001")
    owner = H5(app, simulator, appid)
    owner.login("oOWNER0000000001")
    pay_path = _checkout(owner, shop).headers["Location"]
    order_id = int(pay_path.split("/")[-2])

    # Another subscriber of the same account.
    stranger = H5(app, simulator, appid)
    stranger.login("oSTRANGER0000001")
    for suffix in ("", "/pay", "/status"):
        assert stranger.get(f"/h5/{appid}/orders/{order_id}{suffix}").status_code == 404, suffix
    assert stranger.get(f"/h5/{appid}/orders/{order_id}/status").get_json()["error"]["code"] == "not_found"

    # Another account: the owner signed in there too still cannot reach this order through it.
    other, other_fields, _ = create_account("plain", kind="service")
    owner.login("oOWNER0000000001", f"/h5/{other_fields['appid']}/")
    for suffix in ("", "/pay", "/status"):
        assert owner.get(f"/h5/{other_fields['appid']}/orders/{order_id}{suffix}").status_code == 404
    assert owner.get(f"/h5/{appid}/orders/{order_id}").status_code == 200
    # A session for one account is no session for another.
    fresh = H5(app, simulator, appid)
    fresh.login("oOWNER0000000001")
    assert fresh.get(f"/h5/{other_fields['appid']}/orders").status_code == 302
    # The JSON endpoint answers 401 without a session instead of redirecting.
    anonymous = H5(app, simulator, appid)
    resp = anonymous.get(f"/h5/{appid}/orders/{order_id}/status")
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "session_required"


# -- phone binding and redeem codes --------------------------------------------------------------


def test_bind_phone_by_sms_code_then_back_to_checkout(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    appid = shop["appid"]
    h5 = H5(app, simulator, appid)
    h5.login("oBINDER000000001")
    phone = _phone()
    back_to = f"/h5/{appid}/products/{shop['product'].id}/checkout"
    page_path = f"/h5/{appid}/phone?next={back_to}"
    sent = h5.post(f"/h5/{appid}/phone/sms", {"phone": phone, "next": back_to}, token_from=page_path)
    body = sent.get_data(as_text=True)
    assert sent.status_code == 200 and f"验证码已发送至 {phone[:3]}****{phone[-4:]}" in body
    assert 'name="code"' in body
    code = requests.get(f"{simulator}/_sim/boss/sms/{phone}", timeout=5).json()["code"]
    wrong = "000000" if code != "000000" else "111111"
    bad = h5.post(f"/h5/{appid}/phone/verify", {"code": wrong, "next": back_to}, token_from=page_path)
    assert bad.status_code == 400 and "验证码错误" in bad.get_data(as_text=True)
    ok = h5.post(f"/h5/{appid}/phone/verify", {"code": code, "next": back_to}, token_from=page_path)
    assert ok.status_code == 303 and ok.headers["Location"] == back_to
    assert "手机号绑定成功" in h5.get(back_to).get_data(as_text=True)
    binding = db.session.scalar(sa.select(PhoneBinding).where(PhoneBinding.account_id == shop["account"].id))
    assert binding.phone == phone
    # A bad number is explained on the page; an outside "next" is ignored.
    bad_number = h5.post(f"/h5/{appid}/phone/sms", {"phone": "12"}, token_from=f"/h5/{appid}/phone")
    assert bad_number.status_code == 400 and "请输入正确的手机号" in bad_number.get_data(as_text=True)


def test_redeem_a_code(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    appid = shop["appid"]
    _, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="h5", count=2)
    db.session.commit()
    h5 = H5(app, simulator, appid)
    h5.login("oREDEEM000000001")
    unbound = h5.post(f"/h5/{appid}/redeem", {"code": codes[0]})
    assert unbound.status_code == 409 and "请先绑定手机号" in unbound.get_data(as_text=True)
    _bound(shop, "oREDEEM000000001")
    ok = h5.post(f"/h5/{appid}/redeem", {"code": codes[0].lower()})
    body = ok.get_data(as_text=True)
    assert ok.status_code == 200 and "兑换已受理" in body and "30 元话费" in body
    again = h5.post(f"/h5/{appid}/redeem", {"code": codes[0]})
    assert again.status_code == 400 and "兑换码无效、已使用或已过期" in again.get_data(as_text=True)
    from store.models import CodeStatus, RedeemCode

    statuses = db.session.scalars(sa.select(RedeemCode.status)).all()
    assert sorted(statuses) == sorted([CodeStatus.redeemed, CodeStatus.unused])


def test_order_states_are_labelled(app: Flask, shop: dict[str, Any], simulator: str) -> None:
    from store.h5 import STATUS_LABELS, yuan

    assert set(STATUS_LABELS) >= {s.value for s in OrderStatus}
    assert [yuan(v) for v in (0, 1, 99, 100, 2990, 123456)] == [
        "0.00",
        "0.01",
        "0.99",
        "1.00",
        "29.90",
        "1234.56",
    ]


def test_binding_codes_to_one_number_are_limited_with_a_clear_message(
    app: Flask, shop: dict[str, Any], simulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "SMS_BIND_PER_PHONE_HOUR", 1)
    appid, phone = shop["appid"], _phone()
    for openid, expected in (("oSMSLIMIT0000001", 200), ("oSMSLIMIT0000002", 429)):
        h5 = H5(app, simulator, appid)
        h5.login(openid)
        resp = h5.post(f"/h5/{appid}/phone/sms", {"phone": phone}, token_from=f"/h5/{appid}/phone")
        assert resp.status_code == expected
    body = resp.get_data(as_text=True)
    assert '<p class="notice error" role="alert">该手机号接收验证码太频繁，请一小时后再试</p>' in body
    assert "请输入正确的手机号" not in body  # the number is fine: it is only limited
