"""Alipay's open gateway as merchants see it (wap pay, trade query, refund) and its asynchronous
notifications: form-encoded, RSA2 over the sorted `k=v&…` of every field but `sign`/`sign_type`."""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Blueprint, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from simulator import bills
from simulator.fanout import ALIPAY_RETRIES, copies_of, post_copies, retry_later

bp = Blueprint("sim_alipay", __name__, url_prefix="/alipay")
admin = Blueprint("sim_alipay_admin", __name__, url_prefix="/_sim/alipay")
BEIJING = timezone(timedelta(hours=8))


@dataclass
class AlipayState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    key: Any = None
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    trades: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (app_id, out_trade_no)
    bills: dict[str, bytes] = field(default_factory=dict)


def state() -> AlipayState:
    st = current_app.extensions.get("sim_alipay")
    if st is None:
        st = AlipayState(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        current_app.extensions["sim_alipay"] = st
    return st


def sign_content(params: dict[str, str], *, drop_sign_type: bool) -> str:
    skip = {"sign", "sign_type"} if drop_sign_type else {"sign"}
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in skip)


def _sign(message: str, algorithm: Any = None) -> str:
    return base64.b64encode(
        state().key.sign(message.encode(), padding.PKCS1v15(), algorithm or hashes.SHA256())
    ).decode()


def _verify_request(params: dict[str, str]) -> dict[str, Any] | None:
    app = state().apps.get(params.get("app_id", ""))
    if app is None or params.get("sign_type") != "RSA2":
        return None
    try:
        app["public_key"].verify(
            base64.b64decode(params.get("sign", "")),
            sign_content(params, drop_sign_type=False).encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except Exception:  # noqa: BLE001 - any failure is a bad signature
        return None
    return app


def _answer(method: str, payload: dict[str, Any]) -> Response:
    node = method.replace(".", "_") + "_response"
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    body = f'{{"{node}":{content},"sign":"{_sign(content)}"}}'
    return Response(body, content_type="application/json;charset=utf-8")


@bp.route("/gateway.do", methods=["GET", "POST"])
def gateway() -> ResponseReturnValue:
    params = {**request.args.to_dict(), **request.form.to_dict()}
    app = _verify_request(params)
    method = params.get("method", "")
    if app is None:
        return _answer(
            method, {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"}
        )
    biz = json.loads(params.get("biz_content") or "{}")
    if method == "alipay.data.dataservice.bill.downloadurl.query":
        return _bill_url(method, params["app_id"], str(biz.get("bill_date", "")))
    key = (params["app_id"], str(biz.get("out_trade_no", "")))
    if method == "alipay.trade.wap.pay":
        with state().lock:
            trade = state().trades.get(key)
            if trade is None:
                trade = {
                    "app_id": params["app_id"],
                    "out_trade_no": key[1],
                    "total_amount": str(biz["total_amount"]),
                    "subject": biz.get("subject", ""),
                    "notify_url": params.get("notify_url", ""),
                    "trade_status": "WAIT_BUYER_PAY",
                    "seller_id": app["seller_id"],
                }
                state().trades[key] = trade
        return Response(
            f"<html><body><h1>支付宝</h1><p>{trade['subject']} ¥{trade['total_amount']}</p></body></html>",
            content_type="text/html; charset=utf-8",
        )
    trade = state().trades.get(key)
    if method == "alipay.trade.fastpay.refund.query":
        request_no = str(biz.get("out_request_no") or "")
        refunds = (trade or {}).get("refunds") or {}
        if request_no not in refunds:  # Alipay answers success with no refund_status: not refunded
            return _answer(method, {"code": "10000", "msg": "Success", "out_trade_no": key[1]})
        return _answer(
            method,
            {
                "code": "10000", "msg": "Success", "trade_no": trade["trade_no"], "out_trade_no": key[1],
                "out_request_no": request_no, "refund_amount": str(refunds[request_no]),
                "total_amount": trade["total_amount"], "refund_status": "REFUND_SUCCESS",
                "gmt_refund_pay": trade["refund_times"][request_no][:19].replace("T", " "),
            },
        )  # fmt: skip
    if method == "alipay.trade.query":
        if trade is None:
            return _answer(
                method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
            )
        return _answer(
            method,
            {
                "code": "10000",
                "msg": "Success",
                "out_trade_no": key[1],
                "trade_no": trade.get("trade_no", ""),
                "trade_status": trade["trade_status"],
                "total_amount": trade["total_amount"],
            },
        )
    if method == "alipay.trade.refund":
        with state().lock:
            if trade is None or "trade_no" not in trade:
                return _answer(
                    method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
                )
            refunds = trade.setdefault("refunds", {})
            request_no = str(biz.get("out_request_no") or "")
            repeated = request_no in refunds  # the same request number is the same refund
            if not repeated:
                amount = Decimal(str(biz.get("refund_amount")))
                if sum(refunds.values(), Decimal(0)) + amount > Decimal(trade["total_amount"]):
                    return _answer(
                        method,
                        {
                            "code": "40004",
                            "msg": "Business Failed",
                            "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                        },
                    )
                refunds[request_no] = amount
                trade.setdefault("refund_times", {})[request_no] = datetime.now(BEIJING).isoformat()
            total = sum(refunds.values(), Decimal(0))
            if total == Decimal(trade["total_amount"]):
                trade["trade_status"] = "TRADE_CLOSED"
        return _answer(
            method,
            {
                "code": "10000",
                "msg": "Success",
                "trade_no": trade["trade_no"],
                "out_trade_no": key[1],
                "refund_fee": str(total),
                # As Alipay does: only the call that moved the money says Y; a repeat says N.
                "fund_change": "N" if repeated else "Y",
                "gmt_refund_pay": trade["refund_times"][request_no][:19].replace("T", " "),
            },
        )
    return _answer(
        method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.METHOD_NOT_SUPPORTED"}
    )


def _bill_url(method: str, app_id: str, bill_date: str) -> Response:
    """The day's trade bill: a zip whose detail CSV is GBK, as Alipay serves it."""
    lines: list[dict[str, Any]] = []
    with state().lock:
        for (a, _), t in state().trades.items():
            if a != app_id or "paid_at" not in t:
                continue
            fen = int(Decimal(t["total_amount"]) * 100)
            lines.append(
                {
                    "time": t["paid_at"],
                    "transaction_id": t["trade_no"],
                    "out_trade_no": t["out_trade_no"],
                    "amount": fen,
                }
            )
            for request_no, amount in (t.get("refunds") or {}).items():
                lines.append(
                    {
                        "time": t["refund_times"][request_no],
                        "transaction_id": t["trade_no"],
                        "out_trade_no": t["out_trade_no"],
                        "amount": fen,
                        "refund": int(amount * 100),
                        "out_refund_no": request_no,
                    }
                )
    if not any(bills.day_of(ln["time"]) == bill_date for ln in lines):
        return _answer(method, {"code": "40004", "msg": "Business Failed", "sub_code": "isp.bill_not_exist"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        day = bill_date.replace("-", "")
        text = bills.alipay_statement(app_id, bill_date, lines)
        archive.writestr(f"{app_id}_{day}_业务明细.csv", text.encode("gbk"))
        archive.writestr(f"{app_id}_{day}_业务明细(汇总).csv", "#汇总\r\n".encode("gbk"))
    token = secrets.token_urlsafe(16)
    with state().lock:
        state().bills[token] = buffer.getvalue()
    url = f"{request.host_url}alipay/bills/{token}.zip"
    return _answer(method, {"code": "10000", "msg": "Success", "bill_download_url": url})


@bp.get("/bills/<token>.zip")
def bill_file(token: str) -> ResponseReturnValue:
    content = state().bills.get(token)
    if content is None:
        abort(404)
    return Response(content, content_type="application/zip")


def notification(trade: dict[str, Any], *, sign_type: str = "RSA2", **extra: str) -> dict[str, str]:
    now = datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    fields = {
        "notify_time": now,
        "notify_type": "trade_status_sync",
        "notify_id": secrets.token_hex(16),
        "app_id": trade["app_id"],
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": trade["trade_no"],
        "out_trade_no": trade["out_trade_no"],
        "trade_status": trade["trade_status"],
        "total_amount": trade["total_amount"],
        "receipt_amount": trade["total_amount"],
        "seller_id": trade["seller_id"],
        "subject": trade["subject"],
        "gmt_payment": now,
        "buyer_logon_id": "",
        **extra,
    }
    algorithm = hashes.SHA1() if sign_type == "RSA" else hashes.SHA256()  # noqa: S303 - Alipay's legacy RSA
    fields["sign_type"] = sign_type
    fields["sign"] = _sign(sign_content(fields, drop_sign_type=True), algorithm)
    return fields


@admin.post("/apps")
def register_app() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    for key in ("app_id", "public_key", "seller_id"):
        if not data.get(key):
            abort(400, f"{key} is required")
    with state().lock:
        state().apps[data["app_id"]] = {
            "public_key": serialization.load_pem_public_key(data["public_key"].encode()),
            "seller_id": data["seller_id"],
        }
    pem = (
        state()
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return jsonify({"alipay_public_key": pem}), 201


@admin.post("/pay")
def pay() -> ResponseReturnValue:
    """The buyer pays. ``trade_status`` (TRADE_SUCCESS, then TRADE_FINISHED), ``copies``,
    ``concurrent``, ``deliver: false`` (return the form), ``tamper`` (fields after signing),
    ``sign_type: RSA`` (a SHA-1 signature, which must be refused)."""
    data = request.get_json(silent=True) or {}
    st = state()
    with st.lock:
        trade = next((t for (a, n), t in st.trades.items() if n == data.get("out_trade_no")), None)
        if trade is None:
            abort(404, "no such trade at Alipay")
        if trade.get("refunds"):
            abort(409, "the trade was refunded: it cannot be paid again")
        trade.setdefault("trade_no", datetime.now(BEIJING).strftime("%Y%m%d") + secrets.token_hex(10))
        trade.setdefault("paid_at", datetime.now(BEIJING).isoformat())
        trade["trade_status"] = data.get("trade_status", "TRADE_SUCCESS")
    form = notification(trade, sign_type=data.get("sign_type", "RSA2"))
    form.update(data.get("tamper") or {})
    if data.get("deliver") is False:
        return jsonify({"form": form})
    results = post_copies(
        trade["notify_url"],
        urlencode(form),
        {"Content-Type": "application/x-www-form-urlencoded"},
        copies_of(data),
        bool(data.get("concurrent")),
        read=lambda r: r.text,
        unreachable="",
    )
    retries: list[Any] = []
    if data.get("retries") and "success" not in results:
        # Anything but exactly `success` is resent: 4 m, 10 m, 10 m, 1 h, 2 h, 6 h, 15 h.
        retry_later(
            trade["notify_url"], urlencode(form), {"Content-Type": "application/x-www-form-urlencoded"},
            ALIPAY_RETRIES, float(data.get("retry_factor", 1.0)), lambda r: r.text == "success", retries,
        )  # fmt: skip
    return jsonify({"trade_no": trade["trade_no"], "answers": results})
