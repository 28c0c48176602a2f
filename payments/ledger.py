"""The provider's ledger: one PaymentTransaction row per provider id, raw payload kept."""

from __future__ import annotations

from typing import Any

from payments.models import PaymentTransaction, Provider, TxnKind
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import upsert


def record(
    account_id: int,
    intent_id: int | None,
    kind: TxnKind,
    txn_id: str,
    amount_fen: int,
    status: str,
    raw: dict[str, Any],
    anomaly: str | None = None,
    *,
    provider_name: Provider,
) -> bool:
    """One row per provider id; False if that id was already recorded (a duplicate).

    INSERT … ON CONFLICT DO NOTHING rather than a savepoint: on SQLite (pysqlite's default
    transaction handling) a savepoint's RELEASE can commit the row on its own."""
    inserted = upsert(
        PaymentTransaction,
        [
            {
                "account_id": account_id,
                "intent_id": intent_id,
                "provider": provider_name,
                "kind": kind,
                "provider_txn_id": txn_id,
                "amount_fen": amount_fen,
                "status": status,
                "anomaly": anomaly,
                "raw": raw,
                "created_at": utcnow(),
            }
        ],
        conflict=["provider", "kind", "provider_txn_id"],
        returning=["id"],
    )
    return bool(inserted)
