"""Payment intents: orders pay through them, events move the order inside payments' transaction,
and the migration turns existing orders and money rows into intents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask_migrate import downgrade, upgrade

from payments import intents, refunds
from payments import services as payments
from payments.models import IntentState, PaymentIntent, PaymentTransaction, Refund, RefundStatus
from payments.signals import intent_succeeded
from store import orders
from store.models import Order, OrderStatus
from tests import factories, helpers
from wechat_service.app import create_app
from wechat_service.extensions import db

OPENID = "oINTENT0000001"


@pytest.fixture
def shop(app: Flask, simulator: str) -> dict[str, Any]:
    product = {"code": "t30", "face_value_fen": 3000, "price_fen": 2990, "stock": 5}
    return factories.shop(simulator, kind="mini_program", product=product, openid=OPENID, phone="13800139201")


def _order(shop: dict[str, Any], key: str = "intent-key-0001") -> Order:
    order = factories.order(shop["sub"], shop["product"], key)
    payments.prepay(order, OPENID, "30 元话费")
    db.session.commit()
    return order


def _paid_at_wechatpay(simulator: str, order: Order) -> tuple[dict[str, str], bytes]:
    note = requests.post(
        f"{simulator}/_sim/wechatpay/pay",
        json={"out_trade_no": order.out_trade_no, "deliver": False},
        timeout=10,
    ).json()
    return note["headers"], note["body"].encode()


def _notify(app: Flask, shop: dict[str, Any], headers: dict[str, str], body: bytes) -> Any:
    return app.test_client().post(
        f"/payments/wechatpay/v3/{shop['merchant'].id}/notify", headers=headers, data=body
    )


def test_an_order_creates_its_intent(shop: dict[str, Any]) -> None:
    order = _order(shop)
    intent = intents.of(order)
    assert (intent.amount_fen, intent.state, intent.purpose) == (
        2990,
        IntentState.pending,
        f"order:{order.id}",
    )
    assert intent.payer_id == shop["sub"].id and intent.prepay_id
    assert intent.expires_at == order.created_at + orders.PAY_TIMEOUT


def test_a_payment_after_the_close_goes_back_and_the_order_follows(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    """Closed here (its stock given back) while WeChat Pay still took the money: the intent
    succeeds late, the order moves closed → refunding in the same transaction, the whole amount
    goes back under the full-refund number, and the order ends refunded. A resend changes nothing."""
    order = _order(shop)
    headers, body = _paid_at_wechatpay(simulator, order)
    assert intents.close(intents.of(order))
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status is OrderStatus.closed
    for _ in range(2):
        assert _notify(app, shop, headers, body).status_code == 204
    db.session.expire_all()
    intent = intents.of(order)
    assert intent.state is IntentState.succeeded and intent.refunded_fen == 2990
    (refund,) = refunds.of(order)
    assert (refund.amount_fen, refund.out_refund_no) == (2990, refunds.full_refund_no(order.out_trade_no))
    assert refund.status is RefundStatus.success  # the simulator's merchant refunds at once
    order = db.session.get(Order, order.id)
    assert order.status is OrderStatus.refunded and order.refunded_fen == 2990
    assert [e.to_status for e in orders.history(order.id)] == [
        "pending_payment", "closed", "refunding", "refunded",
    ]  # fmt: skip
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Refund)) == 1


@pytest.fixture
def failing_receiver() -> Iterator[None]:
    """A domain above payments whose receiver fails (a bug, a lost connection)."""

    def boom(sender: str, **_: Any) -> None:
        raise RuntimeError("the order could not be moved")

    intent_succeeded.connect(boom)
    yield
    intent_succeeded.disconnect(boom)


def test_a_failing_receiver_refuses_the_notification_and_keeps_nothing(
    app: Flask, shop: dict[str, Any], simulator: str, failing_receiver: None
) -> None:
    """The order moves inside payments' transaction: when it cannot, the payment is not recorded
    either and WeChat Pay hears a failure (it sends again), never money acknowledged and the order
    left unpaid."""
    order = _order(shop)
    headers, body = _paid_at_wechatpay(simulator, order)
    app.config["PROPAGATE_EXCEPTIONS"], before = False, app.config.get("PROPAGATE_EXCEPTIONS")
    try:
        assert _notify(app, shop, headers, body).status_code >= 500
    finally:
        app.config["PROPAGATE_EXCEPTIONS"] = before
    db.session.expire_all()
    assert intents.of(order).state is IntentState.pending
    assert db.session.get(Order, order.id).status is OrderStatus.pending_payment
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PaymentTransaction)) == 0


def test_the_resend_after_a_failed_receiver_is_applied(
    app: Flask, shop: dict[str, Any], simulator: str
) -> None:
    order = _order(shop)
    headers, body = _paid_at_wechatpay(simulator, order)
    assert _notify(app, shop, headers, body).status_code == 204
    db.session.expire_all()
    assert intents.of(order).state is IntentState.succeeded
    assert db.session.get(Order, order.id).status is OrderStatus.fulfilling


# -- the data migration, on a populated database ---------------------------------------------------

BEFORE = "b3e91c4d7a25"  # the revision before payment intents


NOW = "2026-12-01 10:00:00"
SEED = [
    (
        "INSERT INTO accounts (id, name, kind, appid, app_secret, message_mode, status, timezone,"
        " config_version, created_at, updated_at) VALUES (1, 'A', 'service', 'wxmigrate000001', 's',"
        " 'plain', 'active', 'Asia/Shanghai', 1, :now, :now)",
        [{"now": NOW}],
    ),
    (
        "INSERT INTO subscribers (id, account_id, openid, following, created_at)"
        " VALUES (1, 1, 'oMIG', true, :now)",
        [{"now": NOW}],
    ),
    (
        "INSERT INTO products (id, account_id, code, name, kind, price_fen, enabled, created_at)"
        " VALUES (1, 1, 'p', 'P', 'voucher', 1000, true, :now)",
        [{"now": NOW}],
    ),
    (  # orders in every state a payment leaves them in
        "INSERT INTO orders (id, account_id, subscriber_id, product_id, client_key, out_trade_no,"
        " amount_fen, phone, provider, status, prepay_id, discount_fen, refunded_fen, created_at,"
        " paid_at, finished_at) VALUES (:id, 1, 1, 1, :key, :no, 1000, 'x', 'wechatpay_v3', :status,"
        " :prepay, 0, :refunded, :now, :paid, :now)",
        [
            {
                "id": i,
                "key": f"k{i}",
                "no": f"WSMIG{i:04d}",
                "status": status,
                "prepay": prepay,
                "refunded": refunded,
                "now": NOW,
                "paid": NOW if status not in ("pending_payment", "closed") else None,
            }
            for i, status, refunded, prepay in [
                (1, "pending_payment", 0, "wx-prepay-1"),
                (2, "closed", 0, None),
                (3, "fulfilled", 300, "wx-prepay-3"),
                (4, "refunded", 1000, "wx-prepay-4"),
            ]
        ],
    ),  # fmt: skip
    (  # their money rows, a tampered amount, and money for a trade number never issued
        "INSERT INTO payment_transactions (id, account_id, order_id, provider, kind, provider_txn_id,"
        " amount_fen, status, anomaly, raw, created_at, moved_at) VALUES (:id, 1, :oid,"
        " 'wechatpay_v3', :kind, :pid, :amount, 'SUCCESS', :anomaly, '{}', :now, :now)",
        [
            {"id": i, "oid": oid, "kind": kind, "pid": pid, "amount": amount, "anomaly": anomaly, "now": NOW}
            for i, oid, kind, pid, amount, anomaly in [
                (1, 3, "payment", "TX3", 1000, None),
                (2, 4, "payment", "TX4", 1000, None),
                (3, 4, "refund", "RF4", 1000, None),
                (4, 3, "payment", "TX3-BAD", 1, "amount_mismatch"),
                (5, None, "payment", "TXGHOST", 500, "unknown_order"),
            ]
        ],
    ),
    (
        "INSERT INTO refunds (id, account_id, order_id, provider, out_trade_no, total_fen, out_refund_no,"
        " amount_fen, reason, status, attempts, created_at) VALUES (:id, 1, :oid, 'wechatpay_v3', :no,"
        " 1000, :rno, :amount, 'r', :status, 0, :now)",
        [
            {"id": i, "oid": oid, "no": no, "rno": f"R{i}", "amount": amount, "status": status, "now": NOW}
            for i, oid, no, amount, status in [
                (1, 3, "WSMIG0003", 300, "success"),
                (2, 4, "WSMIG0004", 1000, "success"),
                (3, None, "WXGHOST", 500, "processing"),
            ]
        ],
    ),
]


def _populate(conn: sa.Connection) -> None:
    for sql, rows in SEED:
        conn.execute(sa.text(sql), rows)


def _migrated_app(tmp_path: Path, database: str) -> Flask:
    url = helpers.recreate_database(f"{helpers.DB_NAME}_{database}") if database != "sqlite" else None
    overrides = {
        "SECRET_KEY": helpers.SECRET_KEY,
        "MASTER_KEY": helpers.MASTER_KEY,
        "INSTANCE_PATH": str(tmp_path),
    }
    return create_app({**overrides, **({"DATABASE_URL": url} if url else {})})


@pytest.mark.parametrize("database", ["intents_pg", "sqlite"])
def test_the_migration_turns_orders_into_intents(tmp_path: Path, database: str) -> None:
    app = _migrated_app(tmp_path, database)
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as conn:
            _populate(conn)
        upgrade()
        with db.engine.connect() as conn:
            got = {
                r.out_trade_no: r
                for r in conn.execute(
                    sa.select(PaymentIntent.__table__).order_by(PaymentIntent.__table__.c.id)
                )
            }
            assert {
                no: (r.state, r.refunded_fen, r.provider_txn_id, r.prepay_id) for no, r in got.items()
            } == {
                "WSMIG0001": ("pending", 0, None, "wx-prepay-1"),
                "WSMIG0002": ("closed", 0, None, None),
                "WSMIG0003": ("succeeded", 300, "TX3", "wx-prepay-3"),
                "WSMIG0004": ("succeeded", 1000, "TX4", "wx-prepay-4"),
            }
            assert {r.purpose for r in got.values()} == {f"order:{i}" for i in (1, 2, 3, 4)}
            assert all(
                r.amount_fen == 1000 and r.payer_id == 1 and r.expires_at > r.created_at for r in got.values()
            )
            txn_intents = dict(conn.execute(sa.text("SELECT id, intent_id FROM payment_transactions")).all())
            ids = {no: r.id for no, r in got.items()}
            assert txn_intents == {1: ids["WSMIG0003"], 2: ids["WSMIG0004"], 3: ids["WSMIG0004"],
                                   4: ids["WSMIG0003"], 5: None}  # fmt: skip
            refund_intents = dict(conn.execute(sa.text("SELECT id, intent_id FROM refunds")).all())
            assert refund_intents == {1: ids["WSMIG0003"], 2: ids["WSMIG0004"], 3: None}
            columns = {c["name"] for c in sa.inspect(conn).get_columns("orders")}
            assert not {"refunded_fen", "prepay_id"} & columns
        # The order reads what is refunded from its intent.
        assert db.session.scalar(sa.select(Order.refunded_fen).where(Order.id == 3)) == 300
        db.session.remove()
        # And back: the orders get their columns and figures again.
        downgrade(revision=BEFORE)
        with db.engine.connect() as conn:
            assert dict(conn.execute(sa.text("SELECT id, refunded_fen FROM orders")).all()) == {
                1: 0, 2: 0, 3: 300, 4: 1000,
            }  # fmt: skip
            assert dict(conn.execute(sa.text("SELECT id, order_id FROM refunds")).all()) == {
                1: 3,
                2: 4,
                3: None,
            }
        db.engine.dispose()
