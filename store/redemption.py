"""Redeem codes: batches from a CSPRNG, only keyed hashes stored, each code single-use.

Redeeming is one conditional UPDATE (`… WHERE code_hash = :h AND status = 'unused'`), so of any
number of concurrent attempts exactly one wins, on PostgreSQL and SQLite alike. Failed guesses
are throttled per subscriber. The winning redemption creates a fulfilment, carried out by a job.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from store import catalogue, fulfilment
from store.models import CodeStatus, FulfilmentStatus, ProductKind, RedeemBatch, RedeemCode
from store.services import ThrottledError, binding_of, mask_phone
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, ServiceError
from wechat_service.extensions import db, enqueue_after_commit, get_redis

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud and typed on a phone
CODE_LENGTH = 16
MAX_BATCH = 100_000
FAILURES_PER_HOUR = 10


def _key() -> bytes:
    return hashlib.sha256(
        ("redeem-code:" + str(current_app.config["MASTER_KEY"]).split(",")[0]).encode()
    ).digest()


def normalise(code: str) -> str:
    return re.sub(r"[\s-]", "", code or "").upper()


def code_hash(code: str) -> str:
    return hmac.new(_key(), normalise(code).encode(), hashlib.sha256).hexdigest()


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
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["code", "batch", "valid_from", "valid_until"])
    for code in codes:
        writer.writerow([code, batch.name, batch.valid_from.isoformat(), batch.valid_until.isoformat()])
    return out.getvalue()


def redeem(account_id: int, subscriber_id: int, code: str, source: str) -> dict[str, Any]:
    """Claim the code for the subscriber's bound line and queue its fulfilment."""
    conn = get_redis()
    failures_key = f"redeem:fail:{account_id}:{subscriber_id}"
    if int(conn.get(failures_key) or 0) >= FAILURES_PER_HOUR:
        raise ThrottledError("兑换失败次数过多，请一小时后再试")
    binding = binding_of(account_id, subscriber_id)
    if binding is None:
        # Checked first: a code is never consumed for a subscriber who cannot receive it.
        raise ServiceError("兑换前请先绑定手机号：回复「绑定 手机号」", code="phone_required", status=409)
    now = utcnow()
    valid_batches = sa.select(RedeemBatch.id).where(
        RedeemBatch.account_id == account_id, RedeemBatch.valid_from <= now, RedeemBatch.valid_until > now
    )
    claimed = db.session.execute(
        sa.update(RedeemCode)
        .where(
            RedeemCode.code_hash == code_hash(code),
            RedeemCode.account_id == account_id,
            RedeemCode.status == CodeStatus.unused,
            RedeemCode.batch_id.in_(valid_batches),
        )
        .values(status=CodeStatus.redeemed, redeemed_by=subscriber_id, redeemed_at=now)
        .returning(RedeemCode.id, RedeemCode.batch_id)
    ).first()
    if claimed is None:
        pipe = conn.pipeline()
        pipe.incr(failures_key)
        pipe.expire(failures_key, 3600)
        pipe.execute()
        raise InvalidInputError("兑换码无效、已使用或已过期", fields={"code": ["invalid"]})
    batch = db.session.get(RedeemBatch, claimed.batch_id)
    # A code given back after a failed fulfilment is redeemed again under a new key: the BOSS
    # would only replay the failed first attempt for the old one.
    from store.models import Fulfilment

    attempt = 1 + db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Fulfilment)
        .where(Fulfilment.source == "redemption", Fulfilment.source_id == claimed.id)
    )
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
    from store.jobs import RETRY, fulfil

    enqueue_after_commit("default", fulfil, job.id, retry=RETRY)
    return {
        "product": product.name,
        "kind": product.kind.value,
        "phone": mask_phone(binding.phone),
        "fulfilment_id": job.id,
    }


def settle(fulfilment_id: int) -> str | None:
    """After the fulfilment ended: a receipt, or the code back to the subscriber."""
    from store.models import Fulfilment, Product

    job = db.session.get(Fulfilment, fulfilment_id)
    if job is None or job.source != "redemption":
        return None
    product = db.session.get(Product, job.product_id)
    if job.status is FulfilmentStatus.succeeded:
        what = (
            f"{product.face_value_fen // 100} 元话费" if product.kind is ProductKind.topup else product.name
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
        released = db.session.execute(
            sa.update(RedeemCode)
            .where(RedeemCode.id == job.source_id, RedeemCode.status == CodeStatus.redeemed)
            .values(status=CodeStatus.unused, redeemed_by=None, redeemed_at=None)
        ).rowcount
        return "兑换未能完成，兑换码已恢复，可稍后再试或联系客服。" if released else None
    return None
