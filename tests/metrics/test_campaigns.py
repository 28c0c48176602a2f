"""Campaign metrics against a hand-built fixture: sends, delivery reports and first clicks on the
days they happened (Beijing time), conversions within each campaign's attribution window; and the
ten-minute refresh picks up delivery rows that changed after they were written."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from metrics import rollups
from templates_msg.models import Campaign, Delivery, DeliveryStatus, ReportStatus
from tests.metrics.test_rollups import day_values, ledger, ts  # noqa: F401 - the fixture
from wechat_service.extensions import db


def _delivery(sub: Any, campaign: Campaign, **kw: Any) -> Delivery:
    row = Delivery(
        campaign_id=campaign.id, account_id=sub.account_id, subscriber_id=sub.id, openid=sub.openid,
        kind="campaign", created_at=ts("2026-05-01T00:00:00"), **kw,
    )  # fmt: skip
    db.session.add(row)
    db.session.flush()
    return row


def test_campaign_metrics(app: Any, ledger: Any) -> None:  # noqa: F811 - the imported fixture
    account = ledger.account()
    subs = [ledger.subscriber(account) for _ in range(4)]
    campaign = Campaign(name="may promo", attribution_days=3, created_at=ts("2026-05-01T00:00:00"))
    db.session.add(campaign)
    db.session.flush()
    # 2 May 23:30 UTC is 3 May 07:30 in Beijing: that send counts on the 3rd.
    _delivery(
        subs[0], campaign, status=DeliveryStatus.sent, msgid=1, sent_at=ts("2026-05-02T23:30:00"),
        report=ReportStatus.delivered, reported_at=ts("2026-05-02T23:31:00"),
        first_clicked_at=ts("2026-05-03T02:00:00"), clicks=2,
    )  # fmt: skip
    _delivery(subs[1], campaign, status=DeliveryStatus.sent, msgid=2, sent_at=ts("2026-05-03T01:00:00"))
    _delivery(subs[2], campaign, status=DeliveryStatus.failed, errcode=43004)
    _delivery(subs[3], campaign, control=True)  # held out: never sent, never counted
    db.session.add(
        Delivery(account_id=account.id, openid=subs[0].openid, kind="order_paid", status=DeliveryStatus.sent,
                 sent_at=ts("2026-05-03T03:00:00"), idem_key="order_paid:1")
    )  # fmt: skip
    inside = ledger.order(subs[0], 990, "2026-05-04T01:00:00")  # within 3 days of the click
    ledger.order(subs[0], 500, "2026-05-07T03:00:00")  # after the window (click 05-03 02:00 + 3 days)
    ledger.order(subs[1], 700, "2026-05-02T12:00:00")  # before its send: not the campaign's
    ledger.order(subs[3], 300, "2026-05-04T01:00:00")  # the control group's: not a conversion
    for order in db.session.scalars(__import__("sqlalchemy").select(type(inside))):
        order.status = "paid"
    db.session.flush()
    rollups.rebuild(date(2026, 5, 1), date(2026, 5, 8), [account.id])
    may3 = day_values(account.id, date(2026, 5, 3))
    assert {k: may3.get(k) for k in ("campaign_sends", "campaign_deliveries", "campaign_clicks")} == {
        "campaign_sends": 2,
        "campaign_deliveries": 1,
        "campaign_clicks": 1,
    }
    assert may3.get("transactional_messages") == 1
    may4 = day_values(account.id, date(2026, 5, 4))
    assert (may4.get("campaign_conversions"), may4.get("campaign_revenue_fen")) == (1, 990)
    assert "campaign_conversions" not in day_values(account.id, date(2026, 5, 7))


def test_refresh_sees_a_delivery_that_changed_after_it_was_written(
    app: Any,
    ledger: Any,  # noqa: F811 - the imported fixture
) -> None:
    account = ledger.account()
    sub = ledger.subscriber(account)
    campaign = Campaign(name="now", attribution_days=7, created_at=ts("2026-05-01T00:00:00"))
    db.session.add(campaign)
    db.session.flush()
    row = _delivery(sub, campaign, status=DeliveryStatus.pending)
    now = ts("2026-05-10T04:00:00")
    rollups.refresh(now=now)
    assert "campaign_sends" not in day_values(account.id, date(2026, 5, 10))
    row.status, row.msgid, row.sent_at = DeliveryStatus.sent, 9, now + timedelta(minutes=3)
    db.session.flush()
    rollups.refresh(now=now + timedelta(minutes=10))
    assert day_values(account.id, date(2026, 5, 10)).get("campaign_sends") == 1


def test_a_refresh_long_after_the_change_still_counts_it(
    app: Any,
    ledger: Any,  # noqa: F811 - the imported fixture
) -> None:
    """Changed deliveries are read by the change sequence the database stamps, not by a look-back:
    a refresh that runs hours late (missed runs, a rebuild holding the lock) still sees them."""
    import sqlalchemy as sa

    from metrics.models import MetricDaily, MetricWatermark
    from tests.metrics.test_rollups import rows
    from wechat_service.dbtypes import utcnow

    account = ledger.account()
    sub = ledger.subscriber(account)
    campaign = Campaign(name="late", attribution_days=7, created_at=ts("2026-05-01T00:00:00"))
    db.session.add(campaign)
    db.session.flush()
    row = _delivery(sub, campaign, status=DeliveryStatus.pending)
    real = utcnow()
    rollups.refresh(now=real + timedelta(hours=1))  # settles: the watermark passes the pending row
    mark = db.session.get(MetricWatermark, "deliveries")
    db.session.refresh(row)
    assert mark is not None and mark.last_id >= row.change_seq
    # Sent, reported and clicked on 10 May; the order follows. Then no refresh for hours.
    row.status, row.msgid, row.sent_at = DeliveryStatus.sent, 77, ts("2026-05-10T04:00:00")
    row.report, row.reported_at = ReportStatus.delivered, ts("2026-05-10T04:00:05")
    row.first_clicked_at, row.clicks = ts("2026-05-10T04:30:00"), 1
    order = ledger.order(sub, 1990, "2026-05-11T01:00:00")
    order.status = "paid"
    db.session.flush()
    db.session.refresh(row)
    assert row.change_seq > mark.last_id  # every update draws a new, higher number
    rollups.refresh(now=real + timedelta(hours=3))
    may10 = day_values(account.id, date(2026, 5, 10))
    assert (may10.get("campaign_sends"), may10.get("campaign_deliveries"), may10.get("campaign_clicks")) == (
        1,
        1,
        1,
    )
    assert day_values(account.id, date(2026, 5, 11)).get("campaign_conversions") == 1
    incremental = rows([account.id])
    db.session.execute(sa.delete(MetricDaily))
    rollups.rebuild(date(2026, 5, 1), date(2026, 5, 31), [account.id])
    assert rows([account.id]) == incremental
