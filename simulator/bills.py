"""Daily trade statements as WeChat Pay (v2 `downloadbill`, v3 `tradebill`) and Alipay write them,
with injectable discrepancies (`/_sim/statement-faults`) for reconciliation tests."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

CHINA = timezone(timedelta(hours=8))
WECHAT_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
    "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
    "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
WECHAT_SUMMARY = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)
ALIPAY_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
    "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,"
    "券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)

admin = Blueprint("sim_bills_admin", __name__, url_prefix="/_sim")


@dataclass
class Faults:
    """Per merchant: trades left out of the statement, and amounts written differently."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    drop: dict[str, set[str]] = field(default_factory=dict)
    amount: dict[str, dict[str, int]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # the file differs from its announced hash


def faults() -> Faults:
    return current_app.extensions.setdefault("sim_bill_faults", Faults())


@admin.post("/statement-faults")
def statement_faults() -> ResponseReturnValue:
    """{"merchant": mchid or app_id, "drop": [out_trade_no…], "amount": {out_trade_no: fen},
    "corrupt": true (WeChat Pay v3: the downloaded file no longer matches its hash_value)}."""
    data = request.get_json(silent=True) or {}
    merchant = str(data.get("merchant", ""))
    with faults().lock:
        faults().drop.setdefault(merchant, set()).update(map(str, data.get("drop") or []))
        faults().amount.setdefault(merchant, {}).update(
            {str(k): int(v) for k, v in (data.get("amount") or {}).items()}
        )
        if data.get("corrupt"):
            faults().corrupt.add(merchant)
    return jsonify({"ok": True})


def day_of(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(CHINA).strftime("%Y-%m-%d")


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def wechat_statement(merchant: str, bill_date: str, lines: list[dict[str, Any]]) -> str:
    """``lines``: {time, appid, transaction_id, out_trade_no, openid, amount, and for a refund:
    refund_id, out_refund_no, refund}. ``bill_date`` YYYY-MM-DD. Empty string: no statement."""
    dropped, amounts = faults().drop.get(merchant, set()), faults().amount.get(merchant, {})
    rows = [ln for ln in lines if day_of(ln["time"]) == bill_date and ln["out_trade_no"] not in dropped]
    if not rows:
        return ""
    out = io.StringIO()
    out.write(WECHAT_HEADER + "\r\n")
    paid = refunded = 0
    for ln in rows:
        amount = amounts.get(ln["out_trade_no"], ln["amount"])
        refund = ln.get("refund")
        if refund is None:
            paid += amount
        else:
            refunded += refund
        values = [
            datetime.fromisoformat(ln["time"]).astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
            ln["appid"], merchant, "0", "", ln["transaction_id"], ln["out_trade_no"], ln.get("openid", ""),
            "JSAPI", "SUCCESS" if refund is None else "REFUND", "OTHERS", "CNY",
            _yuan(amount) if refund is None else "0.00", "0.00",
            ln.get("refund_id", "0"), ln.get("out_refund_no", "0"),
            _yuan(refund) if refund is not None else "0.00", "0.00",
            "ORIGINAL" if refund is not None else "", "SUCCESS" if refund is not None else "",
            ln.get("body", "商品"), "", "0.00", "0.60%", _yuan(amount),
            _yuan(refund) if refund is not None else "0.00", "",
        ]  # fmt: skip
        out.write(",".join("`" + v for v in values) + "\r\n")
    out.write(WECHAT_SUMMARY + "\r\n")
    summary = [str(len(rows)), _yuan(paid), _yuan(refunded), "0.00", "0.00", _yuan(paid), _yuan(refunded)]
    out.write(",".join("`" + v for v in summary) + "\r\n")
    return out.getvalue()


def alipay_statement(app_id: str, bill_date: str, lines: list[dict[str, Any]]) -> str:
    """Alipay's trade detail CSV (the one file of the bill zip that we read)."""
    dropped, amounts = faults().drop.get(app_id, set()), faults().amount.get(app_id, {})
    out = io.StringIO()
    out.write("#支付宝业务明细查询\r\n#账号：[" + app_id + "]\r\n")
    out.write(f"#起始日期：[{bill_date} 00:00:00]   终止日期：[{bill_date} 23:59:59]\r\n")
    out.write(
        "#-----------------------------------------业务明细列表----------------------------------------\r\n"
    )
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ALIPAY_HEADER.split(","))
    count = 0
    for ln in lines:
        if day_of(ln["time"]) != bill_date or ln["out_trade_no"] in dropped:
            continue
        count += 1
        refund = ln.get("refund")
        amount = amounts.get(ln["out_trade_no"], ln["amount"])
        shown = amount if refund is None else -refund
        when = datetime.fromisoformat(ln["time"]).astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
        writer.writerow(
            [
                ln["transaction_id"], ln["out_trade_no"], "交易" if refund is None else "退款",
                ln.get("body", "商品"), when, when, "", "", "", "", "buyer@example.com",
                _yuan(shown) if shown >= 0 else "-" + _yuan(-shown),
                _yuan(shown) if shown >= 0 else "-" + _yuan(-shown),
                "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
                ln.get("out_refund_no", ""), "0.00", "0.00", "",
            ]
        )  # fmt: skip
    out.write(
        "#-----------------------------------------业务明细列表结束------------------------------------\r\n"
    )
    out.write(f"#交易合计：{count}笔\r\n#导出时间：[{datetime.now(CHINA):%Y-%m-%d %H:%M:%S}]\r\n")
    return out.getvalue()
