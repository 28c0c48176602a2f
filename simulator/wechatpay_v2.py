"""WeChat Pay API v2 as merchants see it: XML requests signed with the merchant's API key (MD5 or
HMAC-SHA256, as ``sign_type`` says), signed XML answers, payment notifications signed the same way,
refund notifications with ``req_info`` encrypted under AES-256-ECB (key = md5 of the API key)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import requests
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7
from defusedxml.ElementTree import fromstring
from flask import Blueprint, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from simulator import bills
from simulator.fanout import WECHATPAY_RETRIES, copies_of, post_copies, retry_later

BEIJING = ZoneInfo("Asia/Shanghai")

bp = Blueprint("sim_wechatpay_v2", __name__, url_prefix="/wechatpay")
admin = Blueprint("sim_wechatpay_v2_admin", __name__, url_prefix="/_sim/wechatpay/v2")


@dataclass
class V2State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    merchants: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)


def state() -> V2State:
    return current_app.extensions.setdefault("sim_wechatpay_v2", V2State())


def sign(params: dict[str, Any], key: str, sign_type: str = "MD5") -> str:
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] not in ("", None))
    text += f"&key={key}"
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return hashlib.md5(text.encode()).hexdigest().upper()  # noqa: S324 - the protocol's MD5


def to_xml(params: dict[str, Any]) -> str:
    body = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in params.items() if v is not None)
    return f"<xml>{body}</xml>"


def reply(merchant: dict[str, Any] | None, params: dict[str, Any], sign_type: str = "MD5") -> Response:
    out = {"return_code": "SUCCESS", "return_msg": "OK", **params}
    if merchant is not None:
        out.update(appid=merchant["appid"], mch_id=merchant["mchid"], nonce_str=secrets.token_hex(16))
        out["sign"] = sign(out, merchant["api_key"], sign_type)
    return Response(to_xml(out), 200, content_type="text/xml")


def failure(message: str) -> Response:
    return Response(
        to_xml({"return_code": "FAIL", "return_msg": escape(message)}), 200, content_type="text/xml"
    )


def business_error(merchant: dict[str, Any], code: str, description: str, sign_type: str) -> Response:
    return reply(merchant, {"result_code": "FAIL", "err_code": code, "err_code_des": description}, sign_type)


def _request() -> tuple[dict[str, Any], dict[str, str], str] | Response:
    """Parse and authenticate a merchant's XML request."""
    try:
        root = fromstring(request.get_data(), forbid_dtd=True, forbid_entities=True)
    except Exception:  # noqa: BLE001 - any parse failure is the merchant's error
        return failure("XML格式错误")
    data = {child.tag: child.text or "" for child in root}
    merchant = state().merchants.get(data.get("mch_id", ""))
    if merchant is None:
        return failure("mch_id参数格式错误")
    sign_type = data.get("sign_type") or "MD5"
    if sign_type not in ("MD5", "HMAC-SHA256"):
        return failure("签名类型错误")
    if not hmac.compare_digest(data.get("sign", ""), sign(data, merchant["api_key"], sign_type)):
        return failure("签名错误")
    if data.get("appid") and data["appid"] != merchant["appid"]:
        return failure("appid和mch_id不匹配")
    return merchant, data, sign_type


@bp.post("/pay/unifiedorder")
def unifiedorder() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, sign_type = parsed
    try:
        total = int(data.get("total_fee", ""))
    except ValueError:
        total = 0
    if total <= 0 or data.get("trade_type") != "JSAPI" or not data.get("openid"):
        return business_error(merchant, "PARAM_ERROR", "参数错误", sign_type)
    key = (merchant["mchid"], data.get("out_trade_no", ""))
    with state().lock:
        order = state().orders.get(key)
        same = (total, data.get("body"), data.get("time_expire"), data.get("openid"))
        if order is not None and order["request"] != same:
            return business_error(merchant, "INVALID_REQUEST", "商户订单号重复", sign_type)
        if order is not None and order["trade_state"] == "SUCCESS":
            return business_error(merchant, "ORDERPAID", "该订单已支付", sign_type)
        if order is not None and order["trade_state"] == "CLOSED":
            return business_error(merchant, "ORDERCLOSED", "订单已关闭", sign_type)
        order = order or {
            "appid": merchant["appid"],
            "mchid": merchant["mchid"],
            "out_trade_no": data.get("out_trade_no", ""),
            "total_fee": total,
            "openid": data["openid"],
            "notify_url": data.get("notify_url"),
            "sign_type": sign_type,
            "trade_state": "NOTPAY",
            "prepay_id": "wx" + secrets.token_hex(16),
            "request": same,
        }
        state().orders[key] = order
    return reply(
        merchant,
        {"result_code": "SUCCESS", "trade_type": "JSAPI", "prepay_id": order["prepay_id"]},
        sign_type,
    )


def _paid_fields(order: dict[str, Any]) -> dict[str, Any]:
    return {
        "openid": order["openid"],
        "trade_type": "JSAPI",
        "bank_type": "OTHERS",
        "total_fee": order["total_fee"],
        "cash_fee": order["total_fee"],
        "fee_type": "CNY",
        "transaction_id": order["transaction_id"],
        "out_trade_no": order["out_trade_no"],
        # WeChat Pay v2 writes its times as Beijing wall time, without a zone.
        "time_end": datetime.fromisoformat(order["success_time"])
        .astimezone(BEIJING)
        .strftime("%Y%m%d%H%M%S"),
        "is_subscribe": "Y",
    }


@bp.post("/pay/orderquery")
def orderquery() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, sign_type = parsed
    order = state().orders.get((merchant["mchid"], data.get("out_trade_no", "")))
    if order is None:
        return business_error(merchant, "ORDERNOTEXIST", "此交易订单号不存在", sign_type)
    fields: dict[str, Any] = {"result_code": "SUCCESS", "trade_state": order["trade_state"]}
    if order.get("transaction_id"):
        fields.update(_paid_fields(order))
    else:
        fields.update(out_trade_no=order["out_trade_no"], total_fee=order["total_fee"])
    return reply(merchant, fields, sign_type)


@bp.post("/pay/closeorder")
def closeorder() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, sign_type = parsed
    with state().lock:
        order = state().orders.get((merchant["mchid"], data.get("out_trade_no", "")))
        if order is None:
            return business_error(merchant, "ORDERNOTEXIST", "订单不存在", sign_type)
        if order["trade_state"] == "SUCCESS":
            return business_error(merchant, "ORDERPAID", "订单已支付", sign_type)
        order["trade_state"] = "CLOSED"
    return reply(merchant, {"result_code": "SUCCESS"}, sign_type)


@bp.post("/secapi/pay/refund")
def refund() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, sign_type = parsed
    try:
        total, amount = int(data.get("total_fee", "")), int(data.get("refund_fee", ""))
    except ValueError:
        return business_error(merchant, "PARAM_ERROR", "参数错误", sign_type)
    with state().lock:
        order = state().orders.get((merchant["mchid"], data.get("out_trade_no", "")))
        if order is None or order["trade_state"] not in ("SUCCESS", "REFUND"):
            return business_error(merchant, "ORDERNOTEXIST", "订单不存在或未支付", sign_type)
        if total != order["total_fee"] or not 0 < amount <= total:
            return business_error(merchant, "PARAM_ERROR", "退款金额错误", sign_type)
        existing = state().refunds.get(data.get("out_refund_no", ""))
        if existing is None:
            done = sum(
                r["refund_fee"]
                for r in state().refunds.values()
                if r["out_trade_no"] == order["out_trade_no"]
            )
            if done + amount > total:
                return business_error(merchant, "NOTENOUGH", "退款金额超过订单金额", sign_type)
            now = datetime.now(UTC).isoformat()
            instant = merchant.get("refund_status", "SUCCESS") == "SUCCESS"
            existing = {
                "mchid": merchant["mchid"],
                "out_trade_no": order["out_trade_no"],
                "transaction_id": order["transaction_id"],
                "out_refund_no": data.get("out_refund_no", ""),
                "refund_id": "50" + secrets.token_hex(12),
                "refund_fee": amount,
                "total_fee": total,
                "status": "SUCCESS" if instant else "PROCESSING",
                "success_time": now if instant else None,
                "notify_url": data.get("notify_url"),
            }
            state().refunds[existing["out_refund_no"]] = existing
            order["trade_state"] = "REFUND"
            if instant and existing["notify_url"]:
                app = current_app._get_current_object()  # noqa: SLF001 - the thread needs the app
                threading.Thread(
                    target=_deliver_later, args=(app, existing["out_refund_no"]), daemon=True
                ).start()
    return reply(
        merchant,
        {
            "result_code": "SUCCESS",
            "transaction_id": existing["transaction_id"],
            "out_trade_no": existing["out_trade_no"],
            "out_refund_no": existing["out_refund_no"],
            "refund_id": existing["refund_id"],
            "refund_fee": existing["refund_fee"],
            "total_fee": existing["total_fee"],
            "cash_fee": existing["total_fee"],
        },
        sign_type,
    )


@bp.post("/pay/refundquery")
def refundquery() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, sign_type = parsed
    found = state().refunds.get(data.get("out_refund_no", ""))
    if found is None or found["mchid"] != merchant["mchid"]:
        return business_error(merchant, "REFUNDNOTEXIST", "退款订单查询失败", sign_type)
    status = {"SUCCESS": "SUCCESS", "PROCESSING": "PROCESSING", "ABNORMAL": "CHANGE", "CLOSED": "REFUNDCLOSE"}
    return reply(
        merchant,
        {
            "result_code": "SUCCESS",
            "transaction_id": found["transaction_id"],
            "out_trade_no": found["out_trade_no"],
            "total_fee": found["total_fee"],
            "cash_fee": found["total_fee"],
            "refund_count": 1,
            "out_refund_no_0": found["out_refund_no"],
            "refund_id_0": found["refund_id"],
            "refund_fee_0": found["refund_fee"],
            "refund_status_0": status[found["status"]],
        },
        sign_type,
    )


@bp.post("/pay/downloadbill")
def downloadbill() -> ResponseReturnValue:
    parsed = _request()
    if isinstance(parsed, Response):
        return parsed
    merchant, data, _ = parsed
    day = data.get("bill_date", "")
    bill_date = f"{day[:4]}-{day[4:6]}-{day[6:8]}"
    text = bills.wechat_statement(merchant["mchid"], bill_date, statement_lines(merchant["mchid"]))
    if not text:
        return Response(
            to_xml({"return_code": "FAIL", "return_msg": "No Bill Exist", "error_code": "20002"}),
            200,
            content_type="text/xml",
        )
    return Response(text, 200, content_type="text/plain; charset=utf-8")


def statement_lines(mchid: str) -> list[dict[str, Any]]:
    st = state()
    lines: list[dict[str, Any]] = []
    with st.lock:
        for (m, _), o in st.orders.items():
            if m == mchid and o.get("transaction_id"):
                lines.append(
                    {
                        "time": o["success_time"],
                        "appid": o["appid"],
                        "transaction_id": o["transaction_id"],
                        "out_trade_no": o["out_trade_no"],
                        "openid": o["openid"],
                        "amount": o["total_fee"],
                    }
                )
        for r in st.refunds.values():
            if r["mchid"] == mchid and r["status"] == "SUCCESS":
                lines.append(
                    {
                        "time": r["success_time"],
                        "appid": st.merchants[mchid]["appid"],
                        "transaction_id": r["transaction_id"],
                        "out_trade_no": r["out_trade_no"],
                        "amount": r["total_fee"],
                        "refund": r["refund_fee"],
                        "refund_id": r["refund_id"],
                        "out_refund_no": r["out_refund_no"],
                    }
                )
    return lines


# -- notifications -------------------------------------------------------------------------------


def payment_notification(order: dict[str, Any], merchant: dict[str, Any], sign_type: str) -> str:
    fields = {
        "return_code": "SUCCESS",
        "result_code": "SUCCESS",
        "appid": merchant["appid"],
        "mch_id": merchant["mchid"],
        "nonce_str": secrets.token_hex(16),
        **_paid_fields(order),
    }
    if sign_type == "HMAC-SHA256":
        fields["sign_type"] = "HMAC-SHA256"
    fields["sign"] = sign(fields, merchant["api_key"], sign_type)
    return to_xml(fields)


def refund_notification(found: dict[str, Any], merchant: dict[str, Any]) -> str:
    status = {"SUCCESS": "SUCCESS", "ABNORMAL": "CHANGE", "CLOSED": "REFUNDCLOSE"}[found["status"]]
    info = {
        "transaction_id": found["transaction_id"],
        "out_trade_no": found["out_trade_no"],
        "refund_id": found["refund_id"],
        "out_refund_no": found["out_refund_no"],
        "total_fee": found["total_fee"],
        "refund_fee": found["refund_fee"],
        "settlement_refund_fee": found["refund_fee"],
        "refund_status": status,
        "success_time": datetime.fromisoformat(found["success_time"] or datetime.now(UTC).isoformat())
        .astimezone(BEIJING)
        .strftime("%Y-%m-%d %H:%M:%S"),
        "refund_recv_accout": "支付用户的零钱",
        "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
        "refund_request_source": "API",
    }
    plain = ("<root>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in info.items()) + "</root>").encode()
    key = hashlib.md5(merchant["api_key"].encode()).hexdigest().encode()  # noqa: S324 - the protocol's key
    padder = PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the protocol's mode
    req_info = base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()
    return to_xml(
        {
            "return_code": "SUCCESS",
            "appid": merchant["appid"],
            "mch_id": merchant["mchid"],
            "nonce_str": secrets.token_hex(16),
            "req_info": req_info,
        }
    )


def _deliver_later(app: Any, out_refund_no: str) -> None:
    with app.app_context():
        found = state().refunds[out_refund_no]
        body = refund_notification(found, state().merchants[found["mchid"]])
    # WeChat Pay would retry a failed delivery; the merchant's query finds the refund meanwhile.
    with contextlib.suppress(requests.RequestException):
        requests.post(
            found["notify_url"], data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=10
        )


# -- admin -----------------------------------------------------------------------------------------


@admin.post("/merchants")
def register_merchant() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    for key in ("mchid", "api_key", "appid"):
        if not data.get(key):
            abort(400, f"{key} is required")
    with state().lock:
        state().merchants[data["mchid"]] = {
            "mchid": data["mchid"],
            "api_key": data["api_key"],
            "appid": data["appid"],
            "refund_status": data.get("refund_status", "SUCCESS"),
        }
    return jsonify({"ok": True}), 201


@admin.post("/pay")
def pay() -> ResponseReturnValue:
    """The subscriber pays a v2 order: its notification (signed with ``sign_type``, default the
    one the order was placed with) goes out ``copies`` times; ``deliver: false`` returns it."""
    data = request.get_json(silent=True) or {}
    st = state()
    with st.lock:
        order = next((o for (_, n), o in st.orders.items() if n == data.get("out_trade_no")), None)
        if order is None:
            abort(404, "no such order at WeChat Pay")
        if order["trade_state"] == "CLOSED":
            abort(409, "the order is closed: it cannot be paid")
        if order["trade_state"] == "NOTPAY":
            order.update(
                trade_state="SUCCESS",
                transaction_id="42" + secrets.token_hex(13)[:26],
                success_time=datetime.now(UTC).isoformat(),
            )
        merchant = st.merchants[order["mchid"]]
    body = payment_notification(
        {**order, **(data.get("tamper") or {})}, merchant, data.get("sign_type") or order["sign_type"]
    )
    if data.get("deliver") is False:
        return jsonify({"body": body, "transaction_id": order["transaction_id"]})
    statuses = post_copies(
        order["notify_url"],
        body.encode(),
        {"Content-Type": "text/xml"},
        copies_of(data),
        bool(data.get("concurrent")),
    )
    if data.get("retries") and not any(code == 200 for code in statuses):
        # v2 reads the XML answer; a non-200 or an unreachable server is tried again later.
        retry_later(
            order["notify_url"], body.encode(), {"Content-Type": "text/xml"}, WECHATPAY_RETRIES,
            float(data.get("retry_factor", 1.0)), lambda r: r.status_code == 200 and "SUCCESS" in r.text, [],
        )  # fmt: skip
    return jsonify({"transaction_id": order["transaction_id"], "statuses": statuses})


@admin.post("/refunds/<out_refund_no>/finish")
def finish_refund(out_refund_no: str) -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    status = str(data.get("status", "SUCCESS"))
    if status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
        abort(400, "status is SUCCESS, ABNORMAL or CLOSED")
    with state().lock:
        found = state().refunds.get(out_refund_no)
        if found is None:
            abort(404, "no such refund")
        if found["status"] == "PROCESSING":
            found["status"] = status
            found["success_time"] = datetime.now(UTC).isoformat() if status == "SUCCESS" else None
        body = refund_notification(found, state().merchants[found["mchid"]])
    if data.get("deliver") is False or not found.get("notify_url"):
        return jsonify({"body": body})
    try:
        code = requests.post(
            found["notify_url"], data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=10
        ).status_code
    except requests.RequestException:
        code = 0
    return jsonify({"status": code})
