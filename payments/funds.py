"""Fund pools: prepaid budgets (a partner's money behind a data-gift campaign, say) that the
products they fund draw on, with two alert thresholds.

The balance never goes below zero: a draw is one conditional UPDATE (``balance >= amount``), keyed
by a ledger entry unique on (pool, kind, ref), so a retried fulfilment draws once and a failed one
gives its draw back once. Crossing a threshold downwards moves ``alert_level`` up by a conditional
UPDATE — exactly one process wins and raises the alert (a ledger entry the console shows, and a
template message to each of the pool's staff); a top-up lowers the level again so the next
crossing alerts anew.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from payments import signals
from payments.models import AlertLevel, FundPool, FundPoolEntry, PoolEntryKind
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml, upsert
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db
from wechat_service.money import yuan

log = logging.getLogger(__name__)
OPENID_MAX = 64


def create_pool(
    account_id: int,
    *,
    name: str,
    warning_fen: int,
    critical_fen: int,
    alert_openids: list[str] | None = None,
    alert_template_id: str | None = None,
) -> FundPool:
    name = name.strip()
    problems: dict[str, list[str]] = {}
    if not 1 <= len(name) <= 128:
        problems["name"] = ["1 to 128 characters"]
    if not 0 <= critical_fen <= warning_fen:
        problems["critical_fen"] = ["0 ≤ critical threshold ≤ warning threshold"]
    openids = [o.strip() for o in alert_openids or [] if o.strip()]
    if any(len(o) > OPENID_MAX for o in openids) or len(openids) > 20:
        problems["alert_openids"] = ["at most 20 openids"]
    if problems:
        raise InvalidInputError("the fund pool is not valid", fields=problems)
    pool = FundPool(
        account_id=account_id,
        name=name,
        balance_fen=0,
        warning_fen=warning_fen,
        critical_fen=critical_fen,
        alert_level=AlertLevel.critical if critical_fen > 0 else AlertLevel.ok,
        alert_openids=openids,
        alert_template_id=(alert_template_id or "").strip() or None,
        created_at=utcnow(),
    )
    db.session.add(pool)
    db.session.flush()
    return pool


def pool_for(account_id: int, pool_id: int) -> FundPool:
    pool = db.session.get(FundPool, pool_id)
    if pool is None or pool.account_id != account_id:
        raise NotFoundError("no such fund pool")
    return pool


def pools(account_id: int) -> list[FundPool]:
    return list(
        db.session.scalars(sa.select(FundPool).where(FundPool.account_id == account_id).order_by(FundPool.id))
    )


def entries(pool_id: int, limit: int = 200) -> list[FundPoolEntry]:
    return list(
        db.session.scalars(
            sa.select(FundPoolEntry)
            .where(FundPoolEntry.pool_id == pool_id)
            .order_by(FundPoolEntry.id.desc())
            .limit(limit)
        )
    )


def _entry(pool_id: int, kind: PoolEntryKind, amount_fen: int, ref: str, note: str | None = None) -> bool:
    """Insert the ledger entry; False if (pool, kind, ref) is already there."""
    return bool(
        upsert(
            FundPoolEntry,
            [
                {
                    "pool_id": pool_id,
                    "kind": kind,
                    "amount_fen": amount_fen,
                    "ref": ref[:64],
                    "balance_after": 0,  # set once the balance has moved
                    "note": note,
                    "created_at": utcnow(),
                }
            ],
            conflict=["pool_id", "kind", "ref"],
            returning=["id"],
        )
    )


def _move(pool_id: int, delta: int, kind: PoolEntryKind, ref: str) -> int | None:
    """Apply ``delta`` to the balance unless it would go negative; the new balance, or None."""
    new = db.session.execute(
        sa.update(FundPool)
        .where(FundPool.id == pool_id, FundPool.balance_fen + delta >= 0)
        .values(balance_fen=FundPool.balance_fen + delta)
        .returning(FundPool.balance_fen)
    ).scalar()
    if new is not None:
        db.session.execute(
            sa.update(FundPoolEntry)
            .where(
                FundPoolEntry.pool_id == pool_id, FundPoolEntry.kind == kind, FundPoolEntry.ref == ref[:64]
            )
            .values(balance_after=new)
        )
    return new


def top_up(pool_id: int, amount_fen: int, ref: str, note: str | None = None) -> FundPool:
    """Money into the pool (``ref`` names the transfer, so recording it twice adds it once)."""
    if amount_fen <= 0:
        raise InvalidInputError("a top-up is a positive amount", fields={"amount": ["invalid"]})
    if _entry(pool_id, PoolEntryKind.top_up, amount_fen, ref, note):
        balance = _move(pool_id, amount_fen, PoolEntryKind.top_up, ref)
        _settle_level(pool_id, balance)
    else:
        earlier = db.session.scalar(
            sa.select(FundPoolEntry.amount_fen).where(
                FundPoolEntry.pool_id == pool_id,
                FundPoolEntry.kind == PoolEntryKind.top_up,
                FundPoolEntry.ref == ref[:64],
            )
        )
        if earlier != amount_fen:  # another transfer under a reused reference: never drop it silently
            raise ConflictError(
                f"reference {ref!r} was recorded for {yuan(earlier)} 元: give this transfer its own",
                fields={"ref": ["already used"]},
            )
    pool = db.session.get_one(FundPool, pool_id)
    db.session.refresh(pool)
    return pool


def draw(pool_id: int, amount_fen: int, ref: str) -> bool:
    """Reserve ``amount_fen`` for ``ref`` (e.g. a fulfilment); False if the pool cannot cover it.
    Drawing the same ref again is a no-op that answers True."""
    if not _entry(pool_id, PoolEntryKind.debit, -amount_fen, ref):
        return True  # already drawn for this ref
    balance = _move(pool_id, -amount_fen, PoolEntryKind.debit, ref)
    if balance is None:
        db.session.execute(
            sa.delete(FundPoolEntry).where(
                FundPoolEntry.pool_id == pool_id,
                FundPoolEntry.kind == PoolEntryKind.debit,
                FundPoolEntry.ref == ref[:64],
            )
        )
        _settle_level(pool_id, None)
        return False
    _settle_level(pool_id, balance)
    return True


def give_back(pool_id: int, ref: str) -> None:
    """The drawn-for thing failed: its draw comes back, once (only if there was a draw)."""
    drawn = db.session.scalar(
        sa.select(FundPoolEntry.amount_fen).where(
            FundPoolEntry.pool_id == pool_id,
            FundPoolEntry.kind == PoolEntryKind.debit,
            FundPoolEntry.ref == ref[:64],
        )
    )
    if drawn is None:
        return
    if _entry(pool_id, PoolEntryKind.release, -drawn, ref):
        balance = _move(pool_id, -drawn, PoolEntryKind.release, ref)
        _settle_level(pool_id, balance)


def level_of(pool: FundPool, balance: int) -> AlertLevel:
    if balance < pool.critical_fen:
        return AlertLevel.critical
    if balance < pool.warning_fen:
        return AlertLevel.warning
    return AlertLevel.ok


def _settle_level(pool_id: int, balance: int | None) -> None:
    """Raise the alert level when the balance fell below a threshold (one winner alerts), lower
    it when a top-up lifted the balance above one."""
    pool = db.session.get_one(FundPool, pool_id)
    db.session.refresh(pool)
    target = level_of(pool, pool.balance_fen if balance is None else balance)
    current = pool.alert_level
    if target == current:
        return
    moved = execute_dml(
        sa.update(FundPool)
        .where(FundPool.id == pool_id, FundPool.alert_level == current)
        .values(alert_level=int(target))
    ).rowcount
    if not moved or target < current:
        return
    ref = f"{target.name}-{utcnow():%Y%m%d%H%M%S%f}"
    _entry(
        pool_id,
        PoolEntryKind.alert,
        0,
        ref,
        f"balance {pool.balance_fen} fen below the {target.name} threshold",
    )
    db.session.execute(
        sa.update(FundPoolEntry)
        .where(
            FundPoolEntry.pool_id == pool_id,
            FundPoolEntry.kind == PoolEntryKind.alert,
            FundPoolEntry.ref == ref,
        )
        .values(balance_after=pool.balance_fen)
    )
    log.warning("fund pool %s (%s) is %s: %s fen left", pool.id, pool.name, target.name, pool.balance_fen)
    if pool.alert_openids and pool.alert_template_id:
        signals.announce_fund_pool_low(
            {
                "pool_id": pool.id,
                "account_id": pool.account_id,
                "level": target.name,
                "balance_fen": pool.balance_fen,
                "template_id": pool.alert_template_id,
                "openids": list(pool.alert_openids),
                "data": alert_message(pool, target.name, pool.balance_fen),
            }
        )


def alert_message(pool: FundPool, level: str, balance_fen: int) -> dict[str, Any]:
    """The template message's data: the pool, the level, what is left (fields first/keyword*/remark)."""
    return {
        "first": {"value": f"资金池「{pool.name}」余额{'告急' if level == 'critical' else '不足'}"},
        "keyword1": {"value": pool.name},
        "keyword2": {"value": f"{yuan(balance_fen)} 元"},
        "keyword3": {"value": utcnow().strftime("%Y-%m-%d %H:%M UTC")},
        "remark": {"value": f"阈值：预警 {yuan(pool.warning_fen)} 元，告急 {yuan(pool.critical_fen)} 元"},
    }
