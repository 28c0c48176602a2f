"""Redeem codes: batches from a CSPRNG, only keyed hashes stored, each code single-use.

Redeeming is one conditional UPDATE (`… WHERE code_hash = :h AND status = 'unused'`), so of any
number of concurrent attempts exactly one wins, on PostgreSQL and SQLite alike. Failed guesses
are throttled per subscriber. The winning redemption creates a fulfilment, carried out by a job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from store import catalogue, fulfilment
from store.errors import StoreErrorCode
from store.models import (
    CodeStatus,
    Fulfilment,
    FulfilmentStatus,
    Product,
    ProductKind,
    RedeemBatch,
    RedeemCode,
)
from store.services import ThrottledError, binding_of, mask_phone
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from wechat_service.exports import csv_text
from wechat_service.extensions import db, get_redis
from wechat_service.money import yuan
from wechat_service.secrets import open_secret, seal_secret

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud and typed on a phone
CODE_LENGTH = 16
MAX_BATCH = 100_000
FAILURES_PER_HOUR = 10


def _keys() -> list[bytes]:
    """One hashing key per configured master key, newest first. Codes cannot be re-hashed after
    a rotation (their clear text is never kept), so a code is looked up under every key."""
    return [
        hashlib.sha256(("redeem-code:" + master.strip()).encode()).digest()
        for master in str(current_app.config["MASTER_KEY"]).split(",")
        if master.strip()
    ]


def normalise(code: str) -> str:
    return re.sub(r"[\s-]", "", code or "").upper()


def code_hash(code: str, key: bytes | None = None) -> str:
    """The hash new codes are stored under (the newest master key's)."""
    return hmac.new(key or _keys()[0], normalise(code).encode(), hashlib.sha256).hexdigest()


def code_hashes(code: str) -> list[str]:
    return [code_hash(code, key) for key in _keys()]


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def create_batch(
    account_id: int,
    product_id: int,
    *,
    name: str,
    count: int,
    valid_days: int = 90,
    valid_from: datetime | None = None,
) -> tuple[RedeemBatch, list[str]]:
    """The batch and its codes in clear — returned this once, never stored, never shown again."""
    if not 1 <= count <= MAX_BATCH:
        raise InvalidInputError(f"1 to {MAX_BATCH} codes a batch", fields={"count": ["out of range"]})
    if not 1 <= valid_days <= 3650:
        raise InvalidInputError("valid 1 to 3650 days", fields={"valid_days": ["out of range"]})
    product = catalogue.product_for(account_id, product_id)
    start = valid_from or utcnow()
    batch = RedeemBatch(
        account_id=account_id,
        product_id=product.id,
        name=name,
        count=count,
        valid_from=start,
        valid_until=start + timedelta(days=valid_days),
    )
    db.session.add(batch)
    db.session.flush()
    codes: set[str] = set()
    while len(codes) < count:
        codes.add(new_code())
    db.session.execute(
        sa.insert(RedeemCode),
        [
            {
                "batch_id": batch.id,
                "account_id": account_id,
                "code_hash": code_hash(c),
                "status": CodeStatus.unused,
            }
            for c in codes
        ],
    )
    return batch, sorted(codes)


def export_csv(batch: RedeemBatch, codes: list[str]) -> str:
    return csv_text(
        ["code", "batch", "valid_from", "valid_until"],
        ([code, batch.name, batch.valid_from.isoformat(), batch.valid_until.isoformat()] for code in codes),
    )


def redeem(account_id: int, subscriber_id: int, code: str, source: str) -> dict[str, Any]:
    """Claim the code for the subscriber's bound line and queue its fulfilment."""
    conn = get_redis()
    failures_key = f"redeem:fail:{account_id}:{subscriber_id}"
    if int(conn.get(failures_key) or 0) >= FAILURES_PER_HOUR:
        raise ThrottledError("兑换失败次数过多，请一小时后再试")
    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        # Checked first: a code is never consumed for a subscriber who cannot receive it.
        raise ServiceError(
            "兑换前请先绑定手机号：回复「绑定 手机号」", code=StoreErrorCode.phone_required, status=409
        )
    claimed = _claim_code(account_id, subscriber_id, code)
    if claimed is None:
        pipe = conn.pipeline()
        pipe.incr(failures_key)
        pipe.expire(failures_key, 3600)
        pipe.execute()
        raise InvalidInputError("兑换码无效、已使用或已过期", fields={"code": ["invalid"]})
    batch = db.session.get_one(RedeemBatch, claimed.batch_id)
    attempt = _attempt_number(claimed.id)
    product = catalogue.product_for(account_id, batch.product_id)
    job = fulfilment.create(
        account_id=account_id,
        subscriber_id=subscriber_id,
        product=product,
        phone=binding.phone,
        source="redemption",
        source_id=claimed.id,
        idempotency_key=f"redeem-{claimed.id}-{attempt}",
    )
    fulfilment.enqueue(job.id)
    return {
        "product": product.name,
        "kind": product.kind.value,
        "phone": mask_phone(binding.phone),
        "fulfilment_id": job.id,
    }


def _claim_code(account_id: int, subscriber_id: int, code: str) -> sa.Row[int, int] | None:
    """The one conditional UPDATE that redeems an unused code of a batch valid now for the
    subscriber: the code's id and batch id, or None (no such code, used or out of its validity)."""
    now = utcnow()
    valid_batches = sa.select(RedeemBatch.id).where(
        RedeemBatch.account_id == account_id, RedeemBatch.valid_from <= now, RedeemBatch.valid_until > now
    )
    return db.session.execute(
        sa.update(RedeemCode)
        .where(
            RedeemCode.code_hash.in_(code_hashes(code)),
            RedeemCode.account_id == account_id,
            RedeemCode.status == CodeStatus.unused,
            RedeemCode.batch_id.in_(valid_batches),
        )
        .values(status=CodeStatus.redeemed, redeemed_by=subscriber_id, redeemed_at=now)
        .returning(RedeemCode.id, RedeemCode.batch_id)
    ).first()


def _attempt_number(code_id: int) -> int:
    """1 + the code's earlier fulfilments. A code given back after a failed fulfilment is redeemed
    again under a new key: the BOSS would only replay the failed first attempt for the old one."""
    return (
        1
        + db.session.scalars(
            sa.select(sa.func.count())
            .select_from(Fulfilment)
            .where(Fulfilment.source == "redemption", Fulfilment.source_id == code_id)
        ).one()
    )


def settle(fulfilment_id: int) -> str | None:
    """After the fulfilment ended: a receipt, or the code back to the subscriber."""

    job = db.session.get(Fulfilment, fulfilment_id)
    if job is None or job.source != "redemption":
        return None
    product = db.session.get_one(Product, job.product_id)
    if job.status is FulfilmentStatus.succeeded:
        what = (
            f"{yuan(product.face_value_fen, short=True)} 元话费"
            if product.kind is ProductKind.topup
            else product.name
        )
        return f"兑换成功：{what}已充入 {mask_phone(job.phone)}。"
    if job.status is FulfilmentStatus.failed:
        latest = db.session.scalar(
            sa.select(sa.func.max(Fulfilment.id)).where(
                Fulfilment.source == "redemption", Fulfilment.source_id == job.source_id
            )
        )
        if latest != job.id:
            return None  # the code was redeemed again since: that attempt decides
        released = execute_dml(
            sa.update(RedeemCode)
            .where(RedeemCode.id == job.source_id, RedeemCode.status == CodeStatus.redeemed)
            .values(status=CodeStatus.unused, redeemed_by=None, redeemed_at=None)
        ).rowcount
        return "兑换未能完成，兑换码已恢复，可稍后再试或联系客服。" if released else None
    return None


# -- console: batches, their one-time export, voiding ------------------------------------------------

EXPORT_TTL = 3600  # the clear codes wait this long for their one download, then are gone for good


def _export_key(batch_id: int) -> str:
    return f"redeem:export:{batch_id}"


def batches_query(account_id: int) -> sa.Select[Any]:
    return sa.select(RedeemBatch).where(RedeemBatch.account_id == account_id).order_by(RedeemBatch.id.desc())


def batch_for(account_id: int, batch_id: int) -> RedeemBatch:
    batch = db.session.scalar(
        sa.select(RedeemBatch).where(RedeemBatch.id == batch_id, RedeemBatch.account_id == account_id)
    )
    if batch is None:
        raise NotFoundError("no such batch")
    return batch


def code_counts(batch_ids: list[int]) -> dict[int, dict[str, int]]:
    """Codes per batch and status; every status present (0 when none)."""
    out = {b: {s.value: 0 for s in CodeStatus} for b in batch_ids}
    if batch_ids:
        rows = db.session.execute(
            sa.select(RedeemCode.batch_id, RedeemCode.status, sa.func.count())
            .where(RedeemCode.batch_id.in_(batch_ids))
            .group_by(RedeemCode.batch_id, RedeemCode.status)
        )
        for batch_id, status, n in rows:
            out[batch_id][CodeStatus(status).value] = n
    return out


def batch_state(batch: RedeemBatch, now: datetime | None = None) -> str:
    now = now or utcnow()
    if batch.valid_until <= now:
        return "ended"  # expired, or voided (which ends the batch now)
    return "scheduled" if batch.valid_from > now else "active"


def stash_export(batch: RedeemBatch, codes: list[str]) -> None:
    """Keep the clear codes, sealed with the master key, for their one download (Redis only: the
    database never holds them). Called before the batch commits, so a Redis failure stops the batch;
    if the commit fails instead, the orphan expires unread (no batch row will ever claim it: a new
    batch that reuses the id, as SQLite may, overwrites it before committing)."""
    sealed = seal_secret(json.dumps({"batch_id": batch.id, "count": batch.count, "codes": codes}))
    get_redis().set(_export_key(batch.id), sealed, ex=EXPORT_TTL)


def drop_export(batch_id: int) -> None:
    get_redis().delete(_export_key(batch_id))


def export_expires_in(batch_id: int) -> int | None:
    """Seconds left to download the codes, or None when they are gone (downloaded or expired)."""
    ttl = get_redis().ttl(_export_key(batch_id))
    return ttl if ttl and ttl > 0 else None


def take_export(account_id: int, batch_id: int) -> tuple[RedeemBatch, str, str]:
    """The clear codes as CSV, exactly once: read and deleted in one Redis transaction, so of two
    simultaneous downloads one gets the file and the other is refused. Returns (batch, csv, sealed)
    — the sealed value lets the caller put it back if its own commit fails."""
    batch = batch_for(account_id, batch_id)
    pipe = get_redis().pipeline(transaction=True)
    pipe.get(_export_key(batch.id))
    pipe.delete(_export_key(batch.id))
    sealed, _ = pipe.execute()
    if sealed is None:
        raise ServiceError(
            "the codes of this batch were already downloaded (or their hour passed): they are not "
            "kept anywhere; void the batch and create a new one if they were lost",
            code=StoreErrorCode.already_exported,
            status=410,
        )
    try:
        payload = json.loads(open_secret(sealed.decode()))
        if payload["batch_id"] != batch.id or payload["count"] != batch.count:
            raise ServiceError(
                "the stored export does not match this batch", code=StoreErrorCode.export_mismatch, status=409
            )
        return batch, export_csv(batch, payload["codes"]), sealed.decode()
    except Exception:
        restore_export(batch.id, sealed.decode())  # taken but not handed out: keep it for a retry
        raise


def restore_export(batch_id: int, sealed: str) -> None:
    """Put a taken export back (its download failed to commit); never over a newer one."""
    get_redis().set(_export_key(batch_id), sealed, ex=EXPORT_TTL, nx=True)


def void_batch(account_id: int, batch_id: int) -> int:
    """Void every unused code and end the batch now; redeemed codes stay redeemed. Ending the batch
    also stops a code handed back later by a failed fulfilment (``settle``) from being redeemed."""
    batch = batch_for(account_id, batch_id)
    now = utcnow()
    voided = execute_dml(
        sa.update(RedeemCode)
        .where(RedeemCode.batch_id == batch.id, RedeemCode.status == CodeStatus.unused)
        .values(status=CodeStatus.void)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not voided and batch.valid_until <= now:
        raise ConflictError("this batch has ended and has no unused codes left")
    batch.valid_until = min(batch.valid_until, now)
    db.session.flush()
    return voided  # the caller drops the pending export once this commits (drop_export)
