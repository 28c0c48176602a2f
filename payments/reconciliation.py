"""Daily reconciliation: each merchant's statement for a day against our ledger of money moved.

Lines are matched by the provider's own ids (a payment by its transaction id, a refund by its
refund id), so three kinds of difference come out: money the provider moved that we never recorded
(``missing_in_ledger`` — e.g. a lost notification the active query has not caught), money we
recorded that the provider does not list (``missing_in_statement``), and the same line with another
amount (``amount_mismatch``). Our side of a day is the rows recorded within that day in China time;
a line recorded on the other side of midnight is looked up across days before it is called missing.
Re-running a day replaces its report.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from payments import merchants
from payments.models import (
    CHINA,
    Merchant,
    PaymentTransaction,
    ReconciliationItem,
    ReconciliationRun,
    ReconItemKind,
    ReconStatus,
    TxnKind,
    provider_time_of,
)
from payments.providers import kind_of
from payments.providers.base import PaymentProviderError
from wechat_service.dbutil import step_boundary
from wechat_service.errors import InvalidInputError
from wechat_service.exports import csv_writer
from wechat_service.extensions import db
from wechat_service.money import fen_of

log = logging.getLogger(__name__)
PUBLISHED = time(10, 30)  # providers publish yesterday's statement by 10:00 Beijing time
REFUSED = ("amount_mismatch",)  # notifications we refused: no money moved on our word


@dataclass(frozen=True)
class Line:
    kind: TxnKind
    txn_id: str
    out_trade_no: str
    amount_fen: int
    appid: str = ""  # WeChat's 公众账号ID: one merchant number may serve several accounts


def _fen(value: str) -> int:
    return fen_of(value.strip().lstrip("`") or "0")


def parse_wechat(text: str) -> list[Line]:
    """WeChat Pay's trade statement (v2 and v3 alike): a header, backtick-prefixed rows, then a
    summary block that starts with its own header (总交易单数)."""
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(rows, None)
    if not header or "微信订单号" not in header:
        raise ValueError("not a WeChat Pay trade statement")
    col = {name: i for i, name in enumerate(header)}
    lines = []
    for row in rows:
        if not row or row[0].startswith("总交易单数"):
            break
        cell = {name: row[i].lstrip("`") for name, i in col.items() if i < len(row)}
        if cell.get("交易状态") == "REFUND":
            lines.append(
                Line(
                    TxnKind.refund, cell["微信退款单号"], cell["商户订单号"], _fen(cell["退款金额"]),
                    cell.get("公众账号ID", ""),
                )
            )  # fmt: skip
        elif cell.get("交易状态") == "SUCCESS":
            lines.append(
                Line(
                    TxnKind.payment, cell["微信订单号"], cell["商户订单号"], _fen(cell["应结订单金额"]),
                    cell.get("公众账号ID", ""),
                )
            )  # fmt: skip
    return lines


def parse_alipay(text: str) -> list[Line]:
    """Alipay's trade detail CSV: '#' comment lines around a header and rows; refunds are negative
    lines of their trade, named by the refund request number."""
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    rows = csv.reader(body)
    header = next(rows, None)
    if not header or "支付宝交易号" not in [h.strip() for h in header]:
        raise ValueError("not an Alipay trade detail")
    col = {name.strip(): i for i, name in enumerate(header)}
    lines = []
    for row in rows:
        cell = {name: row[i].strip() for name, i in col.items() if i < len(row)}
        amount = _fen(cell.get("订单金额（元）", "0"))
        if cell.get("业务类型") == "退款":
            txn_id = f"{cell['支付宝交易号']}-{cell.get('退款批次号/请求号', '')}"[:64]
            lines.append(Line(TxnKind.refund, txn_id, cell["商户订单号"], abs(amount)))
        elif cell.get("业务类型") == "交易":
            lines.append(Line(TxnKind.payment, cell["支付宝交易号"], cell["商户订单号"], amount))
    return lines


PARSERS = {"wechat": parse_wechat, "alipay": parse_alipay}  # by the provider's statement format


def statement(merchant: Merchant, bill_date: date) -> list[Line] | None:
    """The day's lines for this merchant; None when the provider has no statement for the day."""
    text = merchants.client_for(merchant).day_statement(bill_date)
    if not text:
        return None
    # A WeChat Pay statement covers the merchant number, which may serve several appids (an
    # Alipay bill is one app's own: its lines carry no appid).
    return [
        ln for ln in PARSERS[kind_of(merchant.provider).statement](text) if ln.appid in ("", merchant.appid)
    ]


def day_window(bill_date: date) -> tuple[datetime, datetime]:
    start = datetime.combine(bill_date, time.min, tzinfo=CHINA).astimezone(UTC)
    return start, start + timedelta(days=1)


def provider_time(row: PaymentTransaction) -> datetime:
    """When the provider moved the money, from its own record (a payment at 23:59:58 that we
    recorded at 00:00:03 belongs to the earlier day's statement); else when we recorded it."""
    return provider_time_of(row.raw, row.created_at)


def _ours(merchant: Merchant) -> sa.Select:
    return sa.select(PaymentTransaction).where(
        PaymentTransaction.account_id == merchant.account_id,
        PaymentTransaction.provider == merchant.provider,
        sa.or_(PaymentTransaction.anomaly.is_(None), PaymentTransaction.anomaly.not_in(REFUSED)),
    )


def _ledger(
    merchant: Merchant, start: datetime, end: datetime
) -> dict[tuple[TxnKind, str], PaymentTransaction]:
    """Our rows whose money moved (by the provider's clock) within [start, end). Rows are
    recorded within a day of moving, except refunds finished by a late sweep: a wide net."""
    rows = db.session.scalars(
        _ours(merchant).where(
            PaymentTransaction.created_at >= start - timedelta(days=1),
            PaymentTransaction.created_at < end + timedelta(days=3),
        )
    )
    return {(r.kind, r.provider_txn_id): r for r in rows if start <= provider_time(r) < end}


def _recorded_anytime(
    merchant: Merchant, keys: list[tuple[TxnKind, str]]
) -> dict[tuple[TxnKind, str], PaymentTransaction]:
    found: dict[tuple[TxnKind, str], PaymentTransaction] = {}
    for kind in (TxnKind.payment, TxnKind.refund):
        ids = [txn for k, txn in keys if k is kind]
        for chunk in range(0, len(ids), 500):
            rows = db.session.scalars(
                _ours(merchant).where(
                    PaymentTransaction.kind == kind,
                    PaymentTransaction.provider_txn_id.in_(ids[chunk : chunk + 500]),
                )
            )
            found.update({(r.kind, r.provider_txn_id): r for r in rows})
    return found


@step_boundary("the day's report is replaced whole, and a failure is recorded as such")
def reconcile(merchant_id: int, bill_date: date) -> ReconciliationRun:
    """Fetch, match and store one merchant's day; commits. A statement that cannot be fetched or
    read gives a ``failed`` run with the reason (and the cron tries again the next day)."""
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        raise InvalidInputError("no such merchant")
    run = _replace_run(merchant, bill_date)
    try:
        lines = statement(merchant, bill_date)
    except (PaymentProviderError, ValueError) as exc:
        run.status, run.error = ReconStatus.failed, str(exc)[:500]
        db.session.commit()
        log.error("reconciliation of merchant %s for %s failed: %s", merchant.id, bill_date, exc)
        return run
    start, end = day_window(bill_date)
    ours = _ledger(merchant, start, end)
    if lines is None:
        if ours:  # money moved that day, yet no statement: not published yet — try again later
            run.error = "the provider has no statement for this day yet"
            db.session.commit()
            return run
        lines = []
    theirs = {(ln.kind, ln.txn_id): ln for ln in lines}
    elsewhere = _recorded_anytime(merchant, [k for k in theirs if k not in ours])
    items = _differences(theirs, ours, elsewhere)
    db.session.flush()
    for item in items:
        item.run_id = run.id
    db.session.add_all(items)
    run.statement_rows, run.ledger_rows = len(theirs), len(ours)
    run.matched = len(theirs) - sum(1 for i in items if i.kind is not ReconItemKind.missing_in_statement)
    run.statement_net_fen = _net(theirs.values())
    run.ledger_net_fen = sum(
        r.amount_fen if k == TxnKind.payment else -r.amount_fen for (k, _), r in ours.items()
    )
    run.status = ReconStatus.discrepancies if items else ReconStatus.matched
    db.session.commit()
    return run


def _replace_run(merchant: Merchant, bill_date: date) -> ReconciliationRun:
    """Delete the merchant's report for the day (a re-run replaces it) and add a new run,
    ``failed`` until matched."""
    db.session.execute(
        sa.delete(ReconciliationRun).where(
            ReconciliationRun.merchant_id == merchant.id, ReconciliationRun.bill_date == bill_date
        )
    )
    run = ReconciliationRun(
        account_id=merchant.account_id,
        merchant_id=merchant.id,
        provider=merchant.provider,
        bill_date=bill_date,
        status=ReconStatus.failed,  # until matched
    )
    db.session.add(run)
    return run


def _differences(
    theirs: dict[tuple[TxnKind, str], Line],
    ours: dict[tuple[TxnKind, str], PaymentTransaction],
    elsewhere: dict[tuple[TxnKind, str], PaymentTransaction],
) -> list[ReconciliationItem]:
    """The statement's lines against our rows of the day (or recorded on another day): lines we
    never recorded, other amounts, then our rows the statement does not list."""
    items: list[ReconciliationItem] = []
    for key, line in theirs.items():
        mine = ours.get(key) or elsewhere.get(key)
        if mine is None:
            items.append(
                _item(
                    ReconItemKind.missing_in_ledger,
                    line.kind,
                    line.txn_id,
                    line.out_trade_no,
                    None,
                    line.amount_fen,
                )
            )
        elif mine.amount_fen != line.amount_fen:
            items.append(
                _item(
                    ReconItemKind.amount_mismatch,
                    line.kind,
                    line.txn_id,
                    line.out_trade_no,
                    mine.amount_fen,
                    line.amount_fen,
                )
            )
    for key, mine in ours.items():
        if key not in theirs:
            items.append(
                _item(
                    ReconItemKind.missing_in_statement,
                    mine.kind,
                    mine.provider_txn_id,
                    _trade_no(mine),
                    mine.amount_fen,
                    None,
                )
            )
    return items


def _item(
    kind: ReconItemKind,
    txn_kind: TxnKind,
    txn_id: str,
    out_trade_no: str | None,
    ledger: int | None,
    stmt: int | None,
) -> ReconciliationItem:
    return ReconciliationItem(
        kind=kind,
        txn_kind=txn_kind,
        provider_txn_id=txn_id,
        out_trade_no=out_trade_no,
        ledger_fen=ledger,
        statement_fen=stmt,
    )


def _trade_no(row: PaymentTransaction) -> str | None:
    raw = row.raw or {}
    return raw.get("out_trade_no") or None


def _net(lines: Iterable[Line]) -> int:
    return sum(ln.amount_fen if ln.kind is TxnKind.payment else -ln.amount_fen for ln in lines)


def reconcile_day(bill_date: date | None = None, now: datetime | None = None) -> dict[str, int]:
    """Cron (hourly, whatever the host's timezone): once yesterday's statements are published
    (10:30 Beijing time), every merchant without a finished run for yesterday; or, given a day,
    every merchant for that day."""
    counts: dict[str, int] = {}
    if bill_date is None:
        local = (now or datetime.now(UTC)).astimezone(CHINA)
        if local.time() < PUBLISHED:
            return counts
        bill_date = local.date() - timedelta(days=1)
        done = set(
            db.session.scalars(
                sa.select(ReconciliationRun.merchant_id).where(
                    ReconciliationRun.bill_date == bill_date, ReconciliationRun.status != ReconStatus.failed
                )
            )
        )
    else:
        done = set()
    day = bill_date
    for merchant_id in db.session.scalars(sa.select(Merchant.id).order_by(Merchant.id)).all():
        if merchant_id in done:
            continue
        try:
            status = reconcile(merchant_id, day).status.value
        except Exception:  # noqa: BLE001 - one merchant's trouble must not stop the others
            db.session.rollback()
            log.exception("reconciliation of merchant %s failed", merchant_id)
            status = "error"
        counts[status] = counts.get(status, 0) + 1
    return counts


def runs(account_id: int, limit: int = 60) -> list[ReconciliationRun]:
    return list(
        db.session.scalars(
            sa.select(ReconciliationRun)
            .where(ReconciliationRun.account_id == account_id)
            .order_by(ReconciliationRun.bill_date.desc(), ReconciliationRun.id.desc())
            .limit(limit)
        )
    )


def run_for(account_id: int, run_id: int) -> ReconciliationRun | None:
    run = db.session.get(ReconciliationRun, run_id)
    return run if run is not None and run.account_id == account_id else None


def items_of(run_id: int) -> list[ReconciliationItem]:
    return list(
        db.session.scalars(
            sa.select(ReconciliationItem)
            .where(ReconciliationItem.run_id == run_id)
            .order_by(ReconciliationItem.id)
        )
    )


def items_csv(run: ReconciliationRun) -> str:
    out = io.StringIO()
    writer = csv_writer(out)  # formula-safe; amounts stay numbers (a refund's -500 is not text)
    writer.writerow(
        [
            "bill_date",
            "provider",
            "kind",
            "txn_kind",
            "provider_txn_id",
            "out_trade_no",
            "ledger_fen",
            "statement_fen",
        ]
    )
    for item in items_of(run.id):
        writer.writerow(
            [
                run.bill_date.isoformat(), run.provider.value, item.kind.value, item.txn_kind.value,
                item.provider_txn_id, item.out_trade_no, item.ledger_fen, item.statement_fen,
            ]
        )  # fmt: skip
    return out.getvalue()
