"""One figure, one query: a campaign's conversions on its results page equal the metrics
dashboard's for the same campaign — on PostgreSQL and on the embedded SQLite default, whose date
arithmetic differs (a Python timedelta added to a column compared garbage there: 0 conversions)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flask import Flask

from tests import helpers
from wechat_service.extensions import db


def _scenario() -> dict[str, Any]:
    """One account, one campaign (3-day window): the clicked recipient orders twice inside the
    window, once after it; the other recipient ordered before the send; a control order."""
    from accounts.access import Access
    from accounts.models import Account, Subscriber
    from metrics import reports as metric_reports
    from metrics import rollups
    from store.models import Order, OrderStatus, Product
    from templates_msg import reports
    from templates_msg.models import Campaign, Delivery, DeliveryStatus

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    account = Account(name="Attribution", kind="service", appid="wxattribution0001", app_secret="s")
    db.session.add(account)
    db.session.flush()
    subs = [Subscriber(account_id=account.id, openid=f"oattr{i:020d}") for i in range(3)]
    db.session.add_all(subs)
    product = Product(
        account_id=account.id, code="p", name="p", kind="topup", price_fen=990, face_value_fen=990
    )
    campaign = Campaign(
        name="may",
        attribution_days=3,
        created_at=at("2026-05-01T00:00:00"),
        started_at=at("2026-05-02T00:00:00"),
    )
    db.session.add_all([product, campaign])
    db.session.flush()

    def delivery(sub: Subscriber, **kw: Any) -> Delivery:
        return Delivery(
            campaign_id=campaign.id, account_id=account.id, subscriber_id=sub.id, openid=sub.openid, **kw
        )

    deliveries = [
        delivery(
            subs[0],
            status=DeliveryStatus.sent,
            msgid=1,
            sent_at=at("2026-05-02T01:00:00.250000"),
            first_clicked_at=at("2026-05-02T03:00:00.500000"),
        ),
        delivery(subs[1], status=DeliveryStatus.sent, msgid=2, sent_at=at("2026-05-02T01:00:00")),
        delivery(subs[2], control=True),
    ]
    db.session.add_all(deliveries)
    orders = [
        (subs[0], "2026-05-02T05:00:00"),  # inside: 2 h after the click
        (subs[0], "2026-05-05T03:00:00.400000"),  # inside: 0.1 ms before the window closes
        (subs[0], "2026-05-05T03:00:00.500000"),  # outside: exactly click + 3 days
        (subs[1], "2026-05-01T12:00:00"),  # before the send
        (subs[2], "2026-05-03T12:00:00"),  # the control group's
    ]
    for i, (sub, when) in enumerate(orders):
        db.session.add(
            Order(account_id=account.id, subscriber_id=sub.id, product_id=product.id, client_key=f"k{i}",
                  out_trade_no=f"TATTR{i:08d}", amount_fen=990 + i, phone="13800000000",
                  provider="wechatpay_v3", status=OrderStatus.paid, created_at=at(when))
        )  # fmt: skip
    db.session.flush()
    rollups.rebuild(date(2026, 5, 1), date(2026, 5, 31), [account.id])
    page = reports.stats(campaign.id)
    dashboard = metric_reports.overview(Access(0, True, {}), now=at("2026-05-20T04:00:00"))
    row = next(r for r in dashboard["accounts"] if r["account_id"] == account.id)
    return {
        "page": (page["conversions"], page["revenue_fen"], page.get("converted_recipients")),
        "dashboard": (row["month"]["campaign_conversions"], row["month"]["campaign_revenue_fen"]),
        "control": page["control_conversions"],
    }


def _check(got: dict[str, Any]) -> None:
    assert got["dashboard"] == (2, 990 + 991)
    assert got["page"][:2] == got["dashboard"]
    assert got["page"][2] == 1  # one recipient converted (the conversion rate's numerator)
    assert got["control"] == 1


def test_campaign_page_and_dashboard_agree_on_postgresql(app: Flask) -> None:
    assert db.session.get_bind().dialect.name == "postgresql"
    _check(_scenario())


def test_campaign_page_and_dashboard_agree_on_sqlite(tmp_path: Path) -> None:
    from flask_migrate import upgrade

    from wechat_service.app import create_app

    sqlite_app = create_app(
        {"SECRET_KEY": helpers.SECRET_KEY, "MASTER_KEY": helpers.MASTER_KEY, "INSTANCE_PATH": str(tmp_path)}
    )
    with sqlite_app.app_context():
        assert db.engine.dialect.name == "sqlite"
        upgrade()
        try:
            _check(_scenario())
        finally:
            db.session.rollback()
            db.engine.dispose()
