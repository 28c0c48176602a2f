"""WeChat Pay API v3 as merchants see it: signed requests checked against the merchant's public
key, answers and notifications signed with the platform key (public-key mode), resources
encrypted with AES-256-GCM under the merchant's APIv3 key. Only the JSAPI path so far."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Blueprint, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from simulator import bills
from simulator.fanout import WECHATPAY_RETRIES, copies_of, post_copies, retry_later

bp = Blueprint("sim_wechatpay", __name__, url_prefix="/wechatpay")
admin = Blueprint("sim_wechatpay_admin", __name__, url_prefix="/_sim/wechatpay")
AUTH_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class PayState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    key: Any = None
    key_id: str = ""
    merchants: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (mchid, out_trade_no)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    bills: dict[str, bytes] = field(default_factory=dict)


def state() -> PayState:
    st = current_app.extensions.get("sim_wechatpay")
    if st is None:
        st = PayState(
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            key_id="PUB_KEY_ID_" + secrets.token_hex(12).upper(),
        )
        current_app.extensions["sim_wechatpay"] = st
    return st


def _sign(message: str) -> str:
    return base64.b64encode(state().key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def signed(status: int, payload: dict[str, Any] | None) -> Response:
    body = json.dumps(payload, ensure_ascii=False) if payload is not None else ""
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    resp = Response(body, status=status, content_type="application/json")
    resp.headers.update(
        {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": state().key_id,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": _sign(f"{ts}\n{nonce}\n{body}\n"),
        }
    )
    return resp


def fail(status: int, code: str, message: str) -> Response:
    return signed(status, {"code": code, "message": message})


def _merchant() -> dict[str, Any] | Response:
    """Check the request's Authorization against the merchant's public key (over the path as the
    merchant signed it, without the simulator's /wechatpay prefix)."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("WECHATPAY2-SHA256-RSA2048 "):
        return fail(401, "SIGN_ERROR", "missing Authorization")
    parts = dict(AUTH_RE.findall(auth))
    merchant = state().merchants.get(parts.get("mchid", ""))
    if merchant is None:
        return fail(401, "SIGN_ERROR", "unknown mchid")
    path = request.full_path.rstrip("?")[len("/wechatpay") :]
    body = request.get_data(as_text=True)
    message = f"{request.method}\n{path}\n{parts.get('timestamp')}\n{parts.get('nonce_str')}\n{body}\n"
    try:
        merchant["public_key"].verify(
            base64.b64decode(parts.get("signature", "")),
            message.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except Exception:  # noqa: BLE001 - any failure is a bad signature
        return fail(401, "SIGN_ERROR", "signature does not verify")
    if abs(time.time() - int(parts.get("timestamp") or 0)) > 300:
        return fail(401, "SIGN_ERROR", "stale request")
    return merchant


@bp.post("/v3/pay/transactions/jsapi")
def jsapi() -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    data = request.get_json(silent=True) or {}
    total = (data.get("amount") or {}).get("total")
    if data.get("mchid") != merchant["mchid"] or not isinstance(total, int) or total <= 0:
        return fail(400, "PARAM_ERROR", "mchid or amount.total invalid")
    key = (merchant["mchid"], str(data.get("out_trade_no")))
    with state().lock:
        existing = state().orders.get(key)
        # As WeChat Pay: the same order number again is answered only if the request is the same.
        same = (
            total,
            data.get("description"),
            data.get("time_expire"),
            (data.get("payer") or {}).get("openid"),
        )
        if existing and existing["request"] != same:
            return fail(
                400, "INVALID_REQUEST", "201 商户订单号重复: the same out_trade_no with other parameters"
            )
        if existing and existing["trade_state"] != "NOTPAY":
            return fail(
                400, "ORDERPAID" if existing["trade_state"] == "SUCCESS" else "ORDER_CLOSED", "not payable"
            )
        order = existing or {
            "appid": data.get("appid"),
            "mchid": merchant["mchid"],
            "out_trade_no": data.get("out_trade_no"),
            "amount": total,
            "openid": (data.get("payer") or {}).get("openid"),
            "notify_url": data.get("notify_url"),
            "trade_state": "NOTPAY",
            "prepay_id": "wx" + secrets.token_hex(16),
            "request": same,
        }
        state().orders[key] = order
    return signed(200, {"prepay_id": order["prepay_id"]})


def _transaction(order: dict[str, Any]) -> dict[str, Any]:
    out = {
        "appid": order["appid"],
        "mchid": order["mchid"],
        "out_trade_no": order["out_trade_no"],
        "trade_state": order["trade_state"],
        "trade_type": "JSAPI",
        "payer": {"openid": order["openid"]},
        "amount": {
            "total": order["amount"],
            "currency": "CNY",
            "payer_total": order["amount"],
            "payer_currency": "CNY",
        },
    }
    if order.get("transaction_id"):
        out.update(
            transaction_id=order["transaction_id"], success_time=order["success_time"], bank_type="OTHERS"
        )
    return out


@bp.get("/v3/pay/transactions/out-trade-no/<out_trade_no>")
def query(out_trade_no: str) -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    order = state().orders.get((merchant["mchid"], out_trade_no))
    if order is None:
        return fail(404, "ORDER_NOT_EXIST", "no such order")
    return signed(200, _transaction(order))


@bp.post("/v3/pay/transactions/out-trade-no/<out_trade_no>/close")
def close(out_trade_no: str) -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    with state().lock:
        order = state().orders.get((merchant["mchid"], out_trade_no))
        if order is None:
            return fail(404, "ORDER_NOT_EXIST", "no such order")
        if order.pop("pay_on_close", False) and order["trade_state"] == "NOTPAY":
            _mark_paid(order)  # the subscriber paid between the merchant's last query and its close
        if order["trade_state"] == "SUCCESS":
            return fail(400, "ORDERPAID", "already paid")
        order["trade_state"] = "CLOSED"
    return signed(204, None)


@bp.post("/v3/refund/domestic/refunds")
def refund() -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    data = request.get_json(silent=True) or {}
    with state().lock:
        order = state().orders.get((merchant["mchid"], str(data.get("out_trade_no"))))
        amount = data.get("amount") or {}
        if order is None or order["trade_state"] not in ("SUCCESS", "REFUND"):
            return fail(400, "RESOURCE_NOT_EXISTS", "no paid order")
        if amount.get("total") != order["amount"] or not 0 < int(amount.get("refund", 0)) <= order["amount"]:
            return fail(400, "PARAM_ERROR", "refund amount invalid")
        existing = state().refunds.get(str(data.get("out_refund_no")))
        if existing is not None:
            existing["asked"] += 1  # the same refund asked again: still one refund
        if existing is None:
            refunded = sum(
                r["amount"] for r in state().refunds.values() if r["out_trade_no"] == order["out_trade_no"]
            )
            if refunded + int(amount["refund"]) > order["amount"]:
                return fail(400, "NOT_ENOUGH", "refund exceeds the payment")
            # A merchant registered with refund_status PROCESSING gets WeChat's usual answer: the
            # refund finishes later (/_sim/wechatpay/refunds/<no>/finish posts REFUND.*).
            status = merchant.get("refund_status", "SUCCESS")
            existing = {
                "refund_id": "50" + secrets.token_hex(12),
                "out_refund_no": data.get("out_refund_no"),
                "out_trade_no": order["out_trade_no"],
                "transaction_id": order.get("transaction_id"),
                "amount": int(amount["refund"]),
                "total": order["amount"],
                "status": status,
                "mchid": merchant["mchid"],
                "notify_url": data.get("notify_url"),
                "created_at": datetime.now(UTC).isoformat(),
                "success_time": datetime.now(UTC).isoformat() if status == "SUCCESS" else None,
                "asked": 1,
            }
            state().refunds[existing["out_refund_no"]] = existing
            order["trade_state"] = "REFUND"
    return signed(200, _refund_view(existing))


def _refund_view(refund: dict[str, Any]) -> dict[str, Any]:
    out = {
        "refund_id": refund["refund_id"],
        "out_refund_no": refund["out_refund_no"],
        "transaction_id": refund["transaction_id"],
        "out_trade_no": refund["out_trade_no"],
        "channel": "ORIGINAL",
        "status": refund["status"],
        "create_time": refund["created_at"],
        "amount": {"refund": refund["amount"], "total": refund["total"], "currency": "CNY"},
    }
    if refund.get("success_time"):
        out["success_time"] = refund["success_time"]
    return out


@bp.get("/v3/refund/domestic/refunds/<out_refund_no>")
def refund_query(out_refund_no: str) -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    refund = state().refunds.get(out_refund_no)
    if refund is None or refund["mchid"] != merchant["mchid"]:
        return fail(404, "RESOURCE_NOT_EXISTS", "no such refund")
    return signed(200, _refund_view(refund))


def statement_lines(mchid: str) -> list[dict[str, Any]]:
    """Every payment and successful refund of a merchant, for its daily statement."""
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
                        "openid": o.get("openid") or "",
                        "amount": o["amount"],
                    }
                )
        for r in st.refunds.values():
            if r["mchid"] == mchid and r["status"] == "SUCCESS":
                order = st.orders.get((mchid, r["out_trade_no"])) or {}
                lines.append(
                    {
                        "time": r["success_time"],
                        "appid": order.get("appid", ""),
                        "transaction_id": r["transaction_id"] or "",
                        "out_trade_no": r["out_trade_no"],
                        "amount": r["total"],
                        "refund": r["amount"],
                        "refund_id": r["refund_id"],
                        "out_refund_no": r["out_refund_no"],
                    }
                )
    return lines


@bp.get("/v3/bill/tradebill")
def tradebill() -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    bill_date = request.args.get("bill_date", "")
    text = bills.wechat_statement(merchant["mchid"], bill_date, statement_lines(merchant["mchid"]))
    if not text:
        return fail(400, "NO_STATEMENT_EXIST", "no statement for that day")
    raw = text.encode("utf-8")
    served = raw
    if merchant["mchid"] in bills.faults().corrupt:  # damaged in transit: one digit changed
        at = next(i for i, b in enumerate(raw) if b in b"123456789")
        served = raw[:at] + (b"0" if raw[at] != ord("0") else b"1") + raw[at + 1 :]
    token = secrets.token_urlsafe(16)
    with state().lock:
        state().bills[token] = gzip.compress(served)
    return signed(
        200,
        {
            "download_url": f"{request.host_url}wechatpay/v3/billdownload/file?token={token}",
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(raw).hexdigest(),  # noqa: S324 - WeChat Pay's choice
        },
    )


@bp.get("/v3/billdownload/file")
def bill_file() -> ResponseReturnValue:
    merchant = _merchant()
    if isinstance(merchant, Response):
        return merchant
    content = state().bills.get(request.args.get("token", ""))
    if content is None:
        return fail(404, "RESOURCE_NOT_EXISTS", "no such file")
    return Response(content, 200, content_type="application/octet-stream")


def notification(
    merchant: dict[str, Any],
    transaction: dict[str, Any],
    event_type: str = "TRANSACTION.SUCCESS",
    associated: str = "transaction",
) -> tuple[dict[str, str], str]:
    """A notification as WeChat Pay posts it: signed, resource encrypted."""
    nonce = secrets.token_hex(6)
    ciphertext = AESGCM(merchant["apiv3_key"].encode()).encrypt(
        nonce.encode(), json.dumps(transaction, ensure_ascii=False).encode(), associated.encode()
    )
    body = json.dumps(
        {
            "id": secrets.token_hex(16),
            "create_time": datetime.now(UTC).isoformat(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功" if event_type == "TRANSACTION.SUCCESS" else "退款状态变更",
            "resource": {
                "original_type": associated,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "associated_data": associated,
                "nonce": nonce,
            },
        },
        ensure_ascii=False,
    )
    ts, sig_nonce = str(int(time.time())), secrets.token_hex(16)
    headers = {
        "Content-Type": "application/json",
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": sig_nonce,
        "Wechatpay-Serial": state().key_id,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Wechatpay-Signature": _sign(f"{ts}\n{sig_nonce}\n{body}\n"),
    }
    return headers, body


# -- admin -------------------------------------------------------------------------------------


@admin.post("/merchants")
def register_merchant() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    for key in ("mchid", "public_key", "apiv3_key"):
        if not data.get(key):
            abort(400, f"{key} is required")
    public_key = serialization.load_pem_public_key(data["public_key"].encode())
    with state().lock:
        state().merchants[data["mchid"]] = {
            "mchid": data["mchid"],
            "public_key": public_key,
            "apiv3_key": data["apiv3_key"],
            "refund_status": data.get("refund_status", "SUCCESS"),
        }
    pem = (
        state()
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return jsonify({"platform_public_key": pem, "platform_public_key_id": state().key_id}), 201


def _jsapi_order(st: PayState, params: dict[str, Any], openid: Any) -> dict[str, Any]:
    """What the WeChat client checks before its cashier opens (getBrandWCPayRequest): a known
    prepay_id, the order's appId, signType RSA and paySign = the merchant's SHA256withRSA over
    ``appId\ntimeStamp\nnonceStr\npackage\n`` (and, when given, the payer's openid)."""
    package = str(params.get("package", ""))
    order = next((o for o in st.orders.values() if package == f"prepay_id={o['prepay_id']}"), None)
    if order is None:
        abort(404, "no such prepay_id at WeChat Pay")
    if params.get("signType") != "RSA" or params.get("appId") != order["appid"]:
        abort(400, "signType must be RSA and appId the order's")
    if openid and openid != order["openid"]:
        abort(403, "this subscriber is not the order's payer")
    message = "".join(f"{params.get(k, '')}\n" for k in ("appId", "timeStamp", "nonceStr", "package"))
    try:
        st.merchants[order["mchid"]]["public_key"].verify(
            base64.b64decode(str(params.get("paySign", ""))),
            message.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except Exception:  # noqa: BLE001 - any failure is a bad signature
        abort(401, "paySign does not verify")
    return order


def _mark_paid(order: dict[str, Any]) -> None:
    order.update(
        trade_state="SUCCESS",
        transaction_id="42" + secrets.token_hex(13)[:26],
        success_time=datetime.now(UTC).isoformat(),
    )


@admin.post("/pay")
def pay() -> ResponseReturnValue:
    """The subscriber pays: the order becomes SUCCESS and its notification goes out — ``copies``
    times, at once when ``concurrent``; ``deliver: false`` returns it instead (for forging tests).
    With ``jsapi`` (the page's getBrandWCPayRequest parameters) the order is found by its
    prepay_id and the paySign checked first, as the WeChat client does. ``at: "close"`` defers the
    payment to the instant before the merchant's next close request (which then answers ORDERPAID)."""
    data = request.get_json(silent=True) or {}
    st = state()
    with st.lock:
        if isinstance(data.get("jsapi"), dict):
            order = _jsapi_order(st, data["jsapi"], data.get("openid"))
        else:
            order = next((o for (m, n), o in st.orders.items() if n == data.get("out_trade_no")), None)
        if order is None:
            abort(404, "no such order at WeChat Pay")
        if order["trade_state"] == "CLOSED":
            abort(409, "the order is closed: it cannot be paid")
        if data.get("at") == "close":
            # The payment lands just before the merchant's next close (after its last query); its
            # notification is late, as it is when WeChat Pay answers a close with ORDERPAID.
            order["pay_on_close"] = True
            return jsonify({"out_trade_no": order["out_trade_no"], "at": "close"})
        if order["trade_state"] == "NOTPAY":
            _mark_paid(order)
        merchant = st.merchants[order["mchid"]]
    transaction = {**_transaction(order), **(data.get("tamper") or {})}
    headers, body = notification(merchant, transaction)
    if data.get("deliver") is False:
        return jsonify({"headers": headers, "body": body})
    results = post_copies(
        order["notify_url"], body.encode(), headers, copies_of(data), bool(data.get("concurrent"))
    )
    record = {"out_trade_no": order["out_trade_no"], "statuses": results, "retries": []}
    with st.lock:
        st.notifications.append(record)
    if data.get("retries") and not any(200 <= code < 300 for code in results):
        # Not acknowledged: WeChat Pay tries again on its schedule (compressed by retry_factor).
        retry_later(
            order["notify_url"], body.encode(), headers, WECHATPAY_RETRIES,
            float(data.get("retry_factor", 1.0)), lambda r: 200 <= r.status_code < 300, record["retries"],
        )  # fmt: skip
    return jsonify({"transaction_id": order["transaction_id"], "statuses": results})


@admin.get("/notifications")
def notifications() -> ResponseReturnValue:
    """What was posted for each paid order: the first copies' answers and every retry's."""
    with state().lock:
        return jsonify([dict(n) for n in state().notifications])


@admin.get("/refunds")
def refund_ledger() -> ResponseReturnValue:
    """The refund ledger: every refund this WeChat Pay made (of one order with ``out_trade_no``),
    each once, with how many times it was asked for."""
    wanted = request.args.get("out_trade_no")
    with state().lock:
        return jsonify(
            [
                {k: r[k] for k in ("out_refund_no", "out_trade_no", "amount", "status", "asked")}
                for r in state().refunds.values()
                if wanted is None or r["out_trade_no"] == wanted
            ]
        )


@admin.post("/refunds/<out_refund_no>/finish")
def finish_refund(out_refund_no: str) -> ResponseReturnValue:
    """A PROCESSING refund ends (``status``: SUCCESS, ABNORMAL or CLOSED) and its REFUND.*
    notification goes to the notify URL; ``deliver: false`` returns it instead."""
    data = request.get_json(silent=True) or {}
    status = str(data.get("status", "SUCCESS"))
    if status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
        abort(400, "status is SUCCESS, ABNORMAL or CLOSED")
    st = state()
    with st.lock:
        refund = st.refunds.get(out_refund_no)
        if refund is None:
            abort(404, "no such refund")
        if refund["status"] == "PROCESSING":
            refund["status"] = status
            refund["success_time"] = datetime.now(UTC).isoformat() if status == "SUCCESS" else None
        merchant = st.merchants[refund["mchid"]]
    resource = {
        "mchid": refund["mchid"],
        "out_trade_no": refund["out_trade_no"],
        "transaction_id": refund["transaction_id"],
        "out_refund_no": refund["out_refund_no"],
        "refund_id": refund["refund_id"],
        "refund_status": refund["status"],
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": refund["total"],
            "refund": refund["amount"],
            "payer_total": refund["total"],
            "payer_refund": refund["amount"],
        },
        **({"success_time": refund["success_time"]} if refund.get("success_time") else {}),
        **(data.get("tamper") or {}),
    }
    headers, body = notification(merchant, resource, f"REFUND.{refund['status']}", "refund")
    if data.get("deliver") is False or not refund.get("notify_url"):
        return jsonify({"headers": headers, "body": body})
    try:
        code = requests.post(
            refund["notify_url"], data=body.encode(), headers=headers, timeout=10
        ).status_code
    except requests.RequestException:
        code = 0
    return jsonify({"status": code})
