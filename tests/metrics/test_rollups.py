"""Metric definitions against hand-computed fixtures: day boundaries in the account's timezone
(including a daylight-saving change), re-follows, late events, refunds in a later month than the
sale; the incremental refresh against a full rebuild; org-tree sums."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from accounts.models import Account, OrgUnit, Subscriber, SubscriberEvent
from metrics import queries, rollups
from metrics.models import MetricDaily
from metrics.registry import REGISTRY
from payments import intents
from payments.models import PaymentTransaction
from store.models import Inquiry, Order, OrderEvent, Product
from wechat_service.extensions import db


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def ledger(app: Any) -> Any:
    """Writes ledger rows as the handlers do (append-only, with their own recorded times)."""

    class Ledger:
        def __init__(self) -> None:
            self.n = 0

        def account(self, tz: str = "Asia/Shanghai", unit: OrgUnit | None = None) -> Account:
            self.n += 1
            account = Account(
                name=f"Metrics {self.n}",
                kind="service",
                appid=f"wxmet{self.n:04d}{id(self) % 10000}",
                app_secret="s",
                timezone=tz,
                org_unit_id=unit.id if unit else None,
            )
            db.session.add(account)
            db.session.flush()
            return account

        def subscriber(self, account: Account) -> Subscriber:
            self.n += 1
            sub = Subscriber(account_id=account.id, openid=f"o{self.n:020d}")
            db.session.add(sub)
            db.session.flush()
            return sub

        def event(self, sub: Subscriber, kind: str, at: str, recorded: str | None = None, **kw: Any) -> None:
            db.session.add(
                SubscriberEvent(
                    account_id=sub.account_id,
                    subscriber_id=sub.id,
                    kind=kind,
                    occurred_at=ts(at),
                    recorded_at=ts(recorded or at),
                    detail={},
                    **kw,
                )
            )
            db.session.flush()

        def order(self, sub: Subscriber, amount: int, at: str) -> Order:
            product = Product(
                account_id=sub.account_id,
                code=f"p{self.n}-{amount}",
                name="p",
                kind="topup",
                price_fen=amount,
                face_value_fen=amount,
            )
            self.n += 1
            db.session.add(product)
            db.session.flush()
            order = Order(
                account_id=sub.account_id,
                subscriber_id=sub.id,
                product_id=product.id,
                client_key=f"k{self.n}",
                out_trade_no=f"T{self.n:012d}",
                amount_fen=amount,
                phone="13800000000",
                provider="wechatpay_v3",
                created_at=ts(at),
            )
            db.session.add(order)
            db.session.flush()
            intents.create(
                sub.account_id, provider="wechatpay_v3", out_trade_no=order.out_trade_no, amount_fen=amount,
                purpose=f"order:{order.id}", expires_at=order.created_at,
            )  # fmt: skip
            return order

        def txn(
            self,
            order: Order,
            kind: str,
            amount: int,
            at: str,
            anomaly: str | None = None,
            raw: dict[str, Any] | None = None,
        ) -> None:
            self.n += 1
            db.session.add(
                PaymentTransaction(
                    account_id=order.account_id,
                    intent_id=intents.of(order).id,
                    provider="wechatpay_v3",
                    kind=kind,
                    provider_txn_id=f"X{self.n}",
                    amount_fen=amount,
                    status="SUCCESS",
                    raw=raw or {},
                    anomaly=anomaly,
                    created_at=ts(at),
                )
            )
            db.session.flush()

    return Ledger()


def rows(account_ids: list[int] | None = None) -> dict[tuple[int, str, date, str], int]:
    query = sa.select(MetricDaily)
    if account_ids:
        query = query.where(MetricDaily.account_id.in_(account_ids))
    return {(r.account_id, r.metric, r.day, r.dim): r.value for r in db.session.scalars(query)}


def day_values(account_id: int, day: date) -> dict[str, int]:
    return {
        m: v for (a, m, d, dim), v in rows([account_id]).items() if d == day and dim == "" and a == account_id
    }


def test_registry_has_every_metric_once_with_unit_and_description() -> None:
    assert len(REGISTRY) >= 25
    for key, metric in REGISTRY.items():
        assert metric.key == key and metric.unit and len(metric.description) > 10
        assert metric.manual or metric.source or metric.derived or key == "cumulative_followers"
        for part in metric.derived:
            assert part in REGISTRY


def test_subscriber_metrics_on_local_day_boundaries_refollows_and_late_events(ledger: Any) -> None:
    a = ledger.account("Asia/Shanghai")
    s1, s2, s3 = ledger.subscriber(a), ledger.subscriber(a), ledger.subscriber(a)
    ledger.event(s1, "follow", "2026-03-01T01:00:00")  # 09:00 Beijing, 1 March
    ledger.event(s1, "unfollow", "2026-03-01T15:59:59")  # 23:59:59 Beijing, still 1 March
    ledger.event(s1, "follow", "2026-03-01T16:00:00")  # 00:00 Beijing, 2 March: a re-follow
    ledger.event(s2, "follow", "2026-03-02T03:00:00")
    ledger.event(s3, "message", "2026-03-02T04:00:00")
    ledger.event(s2, "click", "2026-03-02T05:00:00")
    ledger.event(s2, "scan", "2026-03-02T05:10:00")
    # Late: happened at 23:50 Beijing on 2 March, processed at 00:30 on 3 March.
    ledger.event(s3, "follow", "2026-03-02T15:50:00", recorded="2026-03-02T16:30:00")
    ledger.event(s3, "unfollow", "2026-03-03T02:00:00")
    db.session.commit()
    report = rollups.refresh(now=ts("2026-03-04T00:00:00"))
    assert report["accounts"] == 1 and report["ledger_rows"] == 9
    assert day_values(a.id, date(2026, 3, 1)) == {
        "follows": 1,
        "unfollows": 1,
        "new_followers": 1,
        "active_subscribers": 1,
    }  # (net 0 and cumulative 0 on a day that changed nothing: no rows)
    assert day_values(a.id, date(2026, 3, 2)) == {
        "follows": 3,
        "re_follows": 1,
        "new_followers": 2,
        "net_follows": 3,
        "cumulative_followers": 3,
        "messages": 1,
        "menu_clicks": 1,
        "scans": 1,
        "active_subscribers": 3,
    }
    assert day_values(a.id, date(2026, 3, 3)) == {
        "unfollows": 1,
        "net_follows": -1,
        "cumulative_followers": 2,
    }
    march = queries.period_values(
        [a.id], ["follows", "cumulative_followers", "active_subscribers"], date(2026, 3, 1), date(2026, 3, 31)
    )[a.id]
    assert march["follows"] == 4 and march["cumulative_followers"] == 2
    assert march["active_subscribers"] == 3  # distinct over the month: s1 (active on both days) once
    # Nothing new: the second refresh reads nothing and writes nothing.
    assert rollups.refresh(now=ts("2026-03-04T00:10:00"))["ledger_rows"] == 0


def test_daylight_saving_day_boundaries(ledger: Any) -> None:
    a = ledger.account("America/New_York")  # DST from 2026-03-08 02:00 local
    s = ledger.subscriber(a)
    ledger.event(s, "follow", "2026-03-08T04:30:00")  # 23:30 EST, 7 March
    ledger.event(s, "follow", "2026-03-08T05:30:00")  # 00:30 EST, 8 March
    ledger.event(s, "follow", "2026-03-09T03:30:00")  # 23:30 EDT, 8 March
    ledger.event(s, "follow", "2026-03-09T04:30:00")  # 00:30 EDT, 9 March
    ledger.event(s, "follow", "2026-03-12T03:59:00")  # 23:59 EDT, 11 March
    db.session.commit()
    rollups.rebuild(date(2026, 3, 1), date(2026, 3, 31))
    got = {d: v for (_, m, d, dim), v in rows([a.id]).items() if m == "follows"}
    assert got == {date(2026, 3, 7): 1, date(2026, 3, 8): 2, date(2026, 3, 9): 1, date(2026, 3, 11): 1}
    segs = rollups.segments("America/New_York", date(2026, 3, 1), date(2026, 3, 31))
    assert [s[3] for s in segs] == [None, date(2026, 3, 8), None]


def test_money_refund_in_a_later_month_and_anomalies(ledger: Any) -> None:
    a = ledger.account()
    s = ledger.subscriber(a)
    o1 = ledger.order(s, 10_000, "2026-03-31T14:00:00")
    ledger.txn(o1, "payment", 10_000, "2026-03-31T15:30:00")  # 23:30 Beijing, 31 March
    o2 = ledger.order(s, 3_000, "2026-03-31T16:10:00")
    ledger.txn(o2, "payment", 3_000, "2026-03-31T16:20:00")  # 00:20 Beijing, 1 April
    ledger.txn(o2, "payment", 999, "2026-03-31T16:21:00", anomaly="amount_mismatch")  # not revenue
    ledger.txn(o1, "refund", 4_000, "2026-04-02T02:00:00")  # partial refund of a March sale, in April
    db.session.add_all(
        [
            OrderEvent(
                order_id=o1.id,
                from_status="pending_payment",
                to_status="paid",
                at=ts("2026-03-31T15:30:00"),
                detail={},
            )
        ]
    )
    db.session.add(
        Inquiry(
            account_id=a.id,
            subscriber_id=s.id,
            kind="balance",
            source="chat",
            outcome="answered",
            at=ts("2026-04-05T01:00:00"),
        )
    )
    db.session.commit()
    rollups.refresh(now=ts("2026-05-01T00:00:00"))
    keys = [
        "gmv_fen",
        "refunds_fen",
        "net_revenue_fen",
        "paid_transactions",
        "refunds",
        "orders_created",
        "orders_paid",
        "inquiries",
        "inquiries_answered",
    ]
    march = queries.period_values([a.id], keys, date(2026, 3, 1), date(2026, 3, 31))[a.id]
    april = queries.period_values([a.id], keys, date(2026, 4, 1), date(2026, 4, 30))[a.id]
    assert (march["gmv_fen"], march["refunds_fen"], march["net_revenue_fen"]) == (10_000, 0, 10_000)
    assert (april["gmv_fen"], april["refunds_fen"], april["net_revenue_fen"]) == (3_000, 4_000, -1_000)
    assert (march["paid_transactions"], april["paid_transactions"], april["refunds"]) == (1, 1, 1)
    assert (march["orders_created"], april["orders_created"], march["orders_paid"]) == (1, 1, 1)
    assert (april["inquiries"], april["inquiries_answered"]) == (1, 1)


def test_incremental_refresh_equals_full_rebuild(ledger: Any) -> None:
    shanghai, berlin = ledger.account("Asia/Shanghai"), ledger.account("Europe/Berlin")
    subs = [ledger.subscriber(shanghai) for _ in range(4)] + [ledger.subscriber(berlin) for _ in range(3)]
    start = ts("2026-03-25T10:00:00")  # across Berlin's DST change on 29 March
    waves = []
    for wave in range(4):
        for i, sub in enumerate(subs):
            at = start + timedelta(days=wave * 2, hours=i * 5)
            kind = ("follow", "message", "unfollow", "follow", "click")[(wave + i) % 5]
            ledger.event(sub, kind, at.isoformat()[:19], channel_id=None)
        # A late event for the previous day, processed in this wave.
        late_at = start + timedelta(days=wave * 2 - 1, hours=23)
        ledger.event(
            subs[wave], "follow", late_at.isoformat()[:19], (late_at + timedelta(days=1)).isoformat()[:19]
        )
        o = ledger.order(subs[wave], 1000 + wave, (start + timedelta(days=wave * 2)).isoformat()[:19])
        ledger.txn(o, "payment", 1000 + wave, (start + timedelta(days=wave * 2, hours=1)).isoformat()[:19])
        if wave:
            ledger.txn(o, "refund", 500, (start + timedelta(days=wave * 2 + 3)).isoformat()[:19])
        db.session.commit()
        waves.append(rollups.refresh(now=ts("2026-06-01T00:00:00")))
    assert all(w["ledger_rows"] > 0 for w in waves)
    incremental = rows([shanghai.id, berlin.id])
    assert len(incremental) > 40
    db.session.execute(sa.delete(MetricDaily))
    rollups.rebuild(date(2026, 1, 1), date(2026, 5, 31))
    assert rows([shanghai.id, berlin.id]) == incremental
    # And a rebuild of only the middle of the range changes nothing either.
    rollups.rebuild(date(2026, 3, 28), date(2026, 4, 2))
    assert rows([shanghai.id, berlin.id]) == incremental


def test_a_late_follow_recomputes_the_later_days_whose_figures_it_changes(ledger: Any) -> None:
    a = ledger.account()
    s, other = ledger.subscriber(a), ledger.subscriber(a)
    ledger.event(s, "follow", "2026-03-20T02:00:00")
    ledger.event(other, "follow", "2026-03-20T03:00:00")
    ledger.event(s, "message", "2026-03-25T03:00:00")
    db.session.commit()
    rollups.refresh(now=ts("2026-03-26T00:00:00"))
    assert day_values(a.id, date(2026, 3, 20))["new_followers"] == 2
    # A follow (and unfollow) of 10 March reaches us 16 days late: the follow of the 20th was a
    # re-follow all along. The refresh reads only the late rows, yet must redo the 20th too.
    ledger.event(s, "follow", "2026-03-10T02:00:00", recorded="2026-03-26T00:05:00")
    ledger.event(s, "unfollow", "2026-03-11T02:00:00", recorded="2026-03-26T00:05:00")
    db.session.commit()
    assert rollups.refresh(now=ts("2026-03-26T00:30:00"))["ledger_rows"] == 2
    on_20th = day_values(a.id, date(2026, 3, 20))
    assert (on_20th["follows"], on_20th.get("re_follows"), on_20th["new_followers"]) == (2, 1, 1)
    incremental = rows([a.id])
    db.session.execute(sa.delete(MetricDaily))
    rollups.rebuild(date(2026, 3, 1), date(2026, 3, 31))
    assert rows([a.id]) == incremental


def test_org_tree_sums_equal_their_accounts(ledger: Any) -> None:
    group = OrgUnit(code="mg", name="Group", kind="group")
    db.session.add(group)
    db.session.flush()
    province = OrgUnit(code="mgd", name="Guangdong", kind="province", parent_id=group.id)
    db.session.add(province)
    db.session.flush()
    city1 = OrgUnit(code="mgz", name="Guangzhou", kind="city", parent_id=province.id)
    city2 = OrgUnit(code="msz", name="Shenzhen", kind="city", parent_id=province.id)
    db.session.add_all([city1, city2])
    db.session.flush()
    accounts = [
        ledger.account(unit=city1),
        ledger.account(unit=city1),
        ledger.account(unit=city2),
        ledger.account(unit=province),
    ]
    for i, account in enumerate(accounts):
        for j in range(i + 1):
            sub = ledger.subscriber(account)
            ledger.event(sub, "follow", f"2026-03-1{j}T02:00:00")
            ledger.event(sub, "message", f"2026-03-1{j}T03:00:00")
    db.session.commit()
    rollups.rebuild(date(2026, 3, 1), date(2026, 3, 31))
    keys = ["follows", "cumulative_followers", "active_subscribers", "messages"]
    d0, d1 = date(2026, 3, 1), date(2026, 3, 31)
    per_account = queries.period_values([a.id for a in accounts], keys, d0, d1)
    tree = queries.org_tree()
    units = queries.unit_values(tree, [group.id, province.id, city1.id, city2.id], keys, d0, d1)
    for unit, members in (
        (city1, accounts[:2]),
        (city2, accounts[2:3]),
        (province, accounts),
        (group, accounts),
    ):
        for key in keys:
            assert units[unit.id][key] == sum(per_account[a.id][key] for a in members), (unit.name, key)
    assert units[group.id]["follows"] == 1 + 2 + 3 + 4


def test_rankings_share_ranks_on_ties(ledger: Any, app: Any) -> None:
    from accounts.access import Access

    accounts = [ledger.account() for _ in range(3)]
    for account, n in zip(accounts, (2, 5, 2), strict=True):
        for _ in range(n):
            ledger.event(ledger.subscriber(account), "follow", "2026-03-05T02:00:00")
    db.session.commit()
    rollups.rebuild(date(2026, 3, 1), date(2026, 3, 31))
    admin = Access(0, True, {})
    ranked = [
        r
        for r in queries.rankings(admin, "follows", date(2026, 3, 1), date(2026, 3, 31))
        if r["id"] in {a.id for a in accounts}
    ]
    assert [(r["id"], r["rank"], r["value"]) for r in ranked] == [
        (accounts[1].id, 1, 5),
        (accounts[0].id, 2, 2),
        (accounts[2].id, 2, 2),
    ]


def test_rebuild_command(ledger: Any, app: Any) -> None:
    a = ledger.account()
    ledger.event(ledger.subscriber(a), "follow", "2026-02-03T02:00:00")
    db.session.commit()
    result = app.test_cli_runner().invoke(
        args=["metrics", "rebuild", "--from", "2026-02-01", "--to", "2026-02-28"]
    )
    assert result.exit_code == 0, result.output
    assert "rebuilt 2026-02-01…2026-02-28" in result.output
    assert day_values(a.id, date(2026, 2, 3))["follows"] == 1
    bad = app.test_cli_runner().invoke(
        args=["metrics", "rebuild", "--from", "2026-02-28", "--to", "2026-02-01"]
    )
    assert bad.exit_code != 0
