"""Payments console operations: authorise on the account (FINANCE), change, audit — in one
transaction, as accounts/operations.py does. Callers commit."""

from __future__ import annotations

from datetime import date

from accounts import access as acl
from accounts import staff
from accounts.access import Access
from payments import funds, reconciliation
from payments.models import FundPool, Merchant, ReconciliationRun
from wechat_service.errors import ConflictError
from wechat_service.extensions import db


def reconcile(access: Access, account_id: int, bill_date: date, ip: str) -> list[ReconciliationRun]:
    """Run (or re-run) the day for each of the account's merchants; each run commits itself."""
    import sqlalchemy as sa

    account = acl.account_for(access, account_id, acl.FINANCE)
    merchant_ids = db.session.scalars(sa.select(Merchant.id).where(Merchant.account_id == account.id)).all()
    if not merchant_ids:
        raise acl.InvalidInputError("this account has no payment merchant")
    staff.audit(
        access.user_id,
        "reconciliation.run",
        account_id=account.id,
        after={"bill_date": bill_date.isoformat()},
        ip=ip,
    )
    return [reconciliation.reconcile(mid, bill_date) for mid in merchant_ids]


def create_pool(access: Access, account_id: int, fields: dict, ip: str) -> FundPool:
    account = acl.account_for(access, account_id, acl.FINANCE)
    pool = funds.create_pool(account.id, **fields)
    staff.audit(
        access.user_id,
        "fund_pool.create",
        account_id=account.id,
        target=f"fund pool {pool.name}",
        after={
            "warning_fen": pool.warning_fen,
            "critical_fen": pool.critical_fen,
            "alert_openids": len(pool.alert_openids),
        },
        ip=ip,
    )
    return pool


def top_up(
    access: Access, account_id: int, pool_id: int, amount_fen: int, ref: str, note: str, ip: str
) -> FundPool:
    account = acl.account_for(access, account_id, acl.FINANCE)
    pool = funds.pool_for(account.id, pool_id)
    before = pool.balance_fen
    if not ref.strip():
        raise acl.InvalidInputError("name the transfer (its reference)", fields={"ref": ["required"]})
    pool = funds.top_up(pool.id, amount_fen, ref.strip(), note.strip() or None)
    if pool.balance_fen == before:  # the same transfer entered twice: nothing to add or audit
        raise ConflictError("this transfer is already recorded; nothing was added")
    staff.audit(
        access.user_id,
        "fund_pool.top_up",
        account_id=account.id,
        target=f"fund pool {pool.name}",
        before={"balance_fen": before},
        after={"balance_fen": pool.balance_fen, "amount_fen": amount_fen, "ref": ref.strip()[:64]},
        ip=ip,
    )
    return pool
