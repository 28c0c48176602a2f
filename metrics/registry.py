"""The metric registry: every metric defined once — key, unit, description, how it aggregates
over a period, and where it comes from.

A *sourced* metric's source is a small function that, given a :class:`Bucket` (some accounts,
a UTC time range and how to turn a timestamp into the account's local day), returns a SELECT of
``(account_id, day, dim, value)`` rows read from one append-only ledger. A *derived* metric is a
linear combination of other metrics on the same day; ``cumulative_followers`` is the running sum
of ``net_follows``; a *manual* metric is entered in the console.

Adding a metric = one ``@sourced(...)`` function here (and a test against a hand-computed fixture).

Definitions are versioned (:data:`DEFINITIONS_VERSION`): a contract period records the version its
figures used, and a closed period keeps its frozen figures when a definition changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from accounts import facts as account_facts
from payments import facts as payment_facts
from store import facts as store_facts
from store.models import Order
from templates_msg import facts as campaign_facts
from templates_msg.models import Campaign, Delivery
from templates_msg.reports import attributed, plus_days
from wechat_service.extensions import db
from wechat_service.facts import COUNT, Bucket, Feed, Source

active_days = account_facts.active_days  # what metric_active_days keeps (rollups read it here)

SUM, LAST, AVG = "sum", "last", "avg"  # over a period: total; value at its end; mean per day
DISTINCT = "distinct"  # over a period: distinct subscribers (metric_active_days), not a sum of days

# What changed in each version of the definitions, for the reports that record which one they used.
DEFINITIONS_VERSION = 2
DEFINITIONS: dict[int, str] = {
    1: "Money on the day we recorded it; redemptions per fulfilment attempt; active subscribers as "
    "the mean of daily counts, location reports included.",
    2: "Money on the provider's payment or refund time (account's timezone, as reconciliation); "
    "a redemption once per code; active subscribers distinct over the period, by their own "
    "actions only (location reports excluded).",
}


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str  # subscribers, events, fen, orders, score, …
    description: str
    agg: str = SUM
    ledger: str = ""  # the table it reads, for the record
    source: Source | None = None
    derived: dict[str, int] = field(default_factory=dict)  # {metric: coefficient}
    dims: bool = False  # has per-dimension rows besides the total
    manual: bool = False

    @property
    def money(self) -> bool:
        return self.unit == "fen"


REGISTRY: dict[str, Metric] = {}


def _add(metric: Metric) -> Metric:
    if metric.key in REGISTRY:
        raise ValueError(f"metric {metric.key} defined twice")
    REGISTRY[metric.key] = metric
    return metric


def sourced(
    key: str, unit: str, description: str, *, agg: str = SUM, ledger: str, dims: bool = False
) -> Callable[[Source], Source]:
    def register(fn: Source) -> Source:
        _add(Metric(key, unit, description, agg=agg, ledger=ledger, source=fn, dims=dims))
        return fn

    return register


def derived(key: str, unit: str, description: str, combination: dict[str, int]) -> None:
    _add(Metric(key, unit, description, derived=combination))


def manual(key: str, unit: str, description: str, agg: str = AVG) -> None:
    _add(Metric(key, unit, description, agg=agg, manual=True))


# -- the subscriber ledger (bucketed by WeChat's CreateTime, so a late callback lands in its day) --


sourced(
    "follows",
    "subscribers",
    "Follow events (plain and through a QR code, re-follows included).",
    ledger="subscriber_events",
)(account_facts.follows)


sourced("unfollows", "subscribers", "Unfollow events.", ledger="subscriber_events")(account_facts.unfollows)


sourced(
    "re_follows",
    "subscribers",
    "Follows by a subscriber who had followed this account before (any earlier follow event).",
    ledger="subscriber_events",
)(account_facts.re_follows)


sourced("qr_follows", "subscribers", "Follows through a channel QR code.", ledger="subscriber_events")(
    account_facts.qr_follows
)


sourced(
    "follows_by_channel",
    "subscribers",
    "Follows per channel QR code (dimension: channel id).",
    ledger="subscriber_events",
    dims=True,
)(account_facts.follows_by_channel)


sourced("scans", "events", "QR-code scans by subscribers already following.", ledger="subscriber_events")(
    account_facts.scans
)


sourced(
    "menu_clicks", "events", "Menu clicks and menu links opened (CLICK and VIEW).", ledger="subscriber_events"
)(account_facts.menu_clicks)


sourced("messages", "messages", "Messages subscribers sent (text, image, …).", ledger="subscriber_events")(
    account_facts.messages
)


sourced(
    "active_subscribers",
    "subscribers",
    "Distinct subscribers who did something themselves (followed, scanned, clicked or opened a "
    "menu, sent a message); automatic location reports and unfollows are not activity. Over a "
    "period: distinct subscribers in the whole period (one who was active on 20 days counts once).",
    agg=DISTINCT,
    ledger="subscriber_events",
)(account_facts.active)


derived("net_follows", "subscribers", "Follows − unfollows.", {"follows": 1, "unfollows": -1})
derived(
    "new_followers",
    "subscribers",
    "First-time follows: follows − re-follows.",
    {"follows": 1, "re_follows": -1},
)
_add(
    Metric(
        "cumulative_followers",
        "subscribers",
        "Followers at the end of the day: the running sum of net follows in the ledger (followers "
        "imported by a follower sync have no follow event and are not counted; the datacube "
        "reconciliation shows the gap).",
        agg=LAST,
        ledger="subscriber_events",
    )
)


# -- the store ledgers --------------------------------------------------------------------------

sourced(
    "inquiries", "inquiries", "Balance/data/bill/points inquiries, every one counted.", ledger="inquiries"
)(store_facts.inquiries)


sourced(
    "inquiries_answered",
    "inquiries",
    "Inquiries answered at once (fresh or from the cache).",
    ledger="inquiries",
)(store_facts.inquiries_answered)


sourced(
    "inquiries_deferred",
    "inquiries",
    "Inquiries answered later (the BOSS was slower than the budget).",
    ledger="inquiries",
)(store_facts.inquiries_deferred)


sourced("inquiries_failed", "inquiries", "Inquiries that failed.", ledger="inquiries")(
    store_facts.inquiries_failed
)


sourced(
    "inquiries_by_kind",
    "inquiries",
    "Inquiries per kind (dimension: balance, data, bill, points).",
    ledger="inquiries",
    dims=True,
)(store_facts.inquiries_by_kind)


sourced(
    "phones_bound",
    "subscribers",
    "Phone numbers bound (by SMS code or WeChat's phone button).",
    ledger="phone_bindings",
)(store_facts.phones_bound)


sourced("orders_created", "orders", "Orders placed (paid or not).", ledger="orders")(
    store_facts.orders_created
)


sourced("orders_paid", "orders", "Orders that became paid (order history).", ledger="order_events")(
    store_facts.orders_paid
)


sourced("orders_fulfilled", "orders", "Orders carried out by the BOSS.", ledger="order_events")(
    store_facts.orders_fulfilled
)


sourced("orders_refunded", "orders", "Orders refunded in full.", ledger="order_events")(
    store_facts.orders_refunded
)


# Money counts when the provider moved it (its success_time / time_end / gmt_payment /
# gmt_refund_pay, kept as moved_at), on the account's local day — the day the provider's statement
# and our reconciliation put it on — not when we happened to record the notification.


sourced(
    "paid_transactions",
    "transactions",
    "Payments the providers confirmed (anomalies excluded), on the day of the provider's payment "
    "time in the account's timezone.",
    ledger="payment_transactions",
)(payment_facts.paid_transactions)


sourced(
    "gmv_fen",
    "fen",
    "Gross merchandise value: money paid, on the day of the provider's payment time (as in its "
    "statement and our reconciliation), in the account's timezone.",
    ledger="payment_transactions",
)(payment_facts.gmv)


sourced(
    "refunds",
    "transactions",
    "Refunds the providers carried out, on the day the refund succeeded (not the day of the sale).",
    ledger="payment_transactions",
)(payment_facts.refunds)


sourced(
    "refunds_fen",
    "fen",
    "Money refunded, on the day the refund succeeded (not the day of the sale).",
    ledger="payment_transactions",
)(payment_facts.refunds_fen)


derived(
    "net_revenue_fen",
    "fen",
    "GMV − refunds. Refunds count on the day they succeeded, so a period in which earlier sales "
    "were refunded can be negative.",
    {"gmv_fen": 1, "refunds_fen": -1},
)


sourced(
    "redemptions",
    "codes",
    "Redeem codes redeemed: once per code, on the day it was first redeemed, however often its "
    "fulfilment was retried (or the code given back after a failure and redeemed again).",
    ledger="fulfilments",
)(store_facts.redemptions)


sourced("coupon_uses", "coupons", "Coupons applied to orders.", ledger="coupon_uses")(store_facts.coupon_uses)


sourced("coupon_discount_fen", "fen", "Discount granted by coupons.", ledger="coupon_uses")(
    store_facts.coupon_discount
)


sourced("points_exchanges", "exchanges", "Products exchanged for points.", ledger="points_holds")(
    store_facts.points_exchanges
)


sourced("points_spent", "points", "Points debited for exchanges.", ledger="points_holds")(
    store_facts.points_spent
)


manual("support_quality", "score", "On-site support quality score (0–100), entered in the console.")


# -- campaigns (templates_msg) ---------------------------------------------------------------------
# A delivery row changes as it goes (sent, reported, clicked): each metric buckets by the time of
# its own step, and the refresh re-reads deliveries by their change sequence (FEEDS below).

M = Delivery


sourced(
    "campaign_sends", "messages", "Campaign template messages WeChat accepted (a msgid).", ledger="deliveries"
)(campaign_facts.campaign_sends)


sourced(
    "campaign_deliveries",
    "messages",
    "Campaign messages WeChat reported delivered (TEMPLATESENDJOBFINISH success), on the report's day.",
    ledger="deliveries",
)(campaign_facts.campaign_deliveries)


sourced(
    "campaign_clicks",
    "subscribers",
    "Recipients who clicked a campaign link (first click).",
    ledger="deliveries",
)(campaign_facts.campaign_clicks)


sourced(
    "transactional_messages",
    "messages",
    "Transactional messages sent (order paid/fulfilled/refunded, fund alerts).",
    ledger="deliveries",
)(campaign_facts.transactional)


def _attributed_orders(b: Bucket) -> Any:
    # The campaign results page counts with the very same predicate (one definition, one query).
    return attributed(Order, b.dialect)


@sourced(
    "campaign_conversions",
    "orders",
    "Paid orders attributed to a campaign: placed by a recipient within the campaign's attribution "
    "window after their first click (or, without a click, the send); on the day the order was "
    "placed. An order attributed to two campaigns counts once here and once on each campaign's page.",
    ledger="orders",
)
def _campaign_conversions(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, Order.created_at, COUNT, _attributed_orders(b))


@sourced("campaign_revenue_fen", "fen", "Amount of the orders attributed to campaigns.", ledger="orders")
def _campaign_revenue(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, Order.created_at, sa.func.sum(Order.amount_fen), _attributed_orders(b))


# -- feeds: how the incremental refresh finds new and changed rows --------------------------------
#
# A refresh recomputes every (account, local day) whose figures the rows it reads can change:
# - the days of the rows' own business times (a ledger row can carry several, e.g. an order event
#   moves orders_paid on its own day and the order's conversion on the day the order was placed);
# - days of *other* rows that the new ones change ("reaches"), where a metric depends on more than
#   one day: a follow makes the subscriber's later follows re-follows (re_follows, new_followers);
#   a redemption attempt makes later attempts of the same code repeats (redemptions); a delivery
#   sent or clicked attributes the recipient's orders within the window (campaign_conversions,
#   campaign_revenue_fen);
# - cumulative_followers is a running total: the recompute carries it from the first dirty day on;
# - active subscribers over a period are distinct: metric_active_days keeps them per day, so a
#   period's figure is read from there and no day depends on another.
# There are no first-time-vs-repeat buyer metrics; one would need a reach like re-follows'.


def _attributable_orders(new: Any) -> sa.Select:
    """Orders of the recipients of changed deliveries placed from the earlier of send and click to
    the end of the window after the later: attributed before or after the change."""
    dialect = db.session.get_bind().dialect.name
    first = sa.case((M.first_clicked_at < M.sent_at, M.first_clicked_at), else_=M.sent_at)
    last = sa.case((M.first_clicked_at > M.sent_at, M.first_clicked_at), else_=M.sent_at)
    return (
        sa.select(Order.account_id, sa.func.min(Order.created_at), sa.func.max(Order.created_at))
        .select_from(M)
        .join(Campaign, Campaign.id == M.campaign_id)
        .join(Order, sa.and_(Order.subscriber_id == M.subscriber_id, Order.account_id == M.account_id))
        .where(
            new,
            M.sent_at.is_not(None),
            Order.created_at >= first,
            Order.created_at < plus_days(last, Campaign.attribution_days, dialect),
        )
        .group_by(Order.account_id)
    )


# Each domain offers the feeds of its own ledgers; the deliveries' feed stays here for now, since a
# changed delivery reaches the recipient's orders (the one place metrics still joins two domains).
_DELIVERIES = Feed(
    "deliveries", M.change_seq, M.changed_at, (M.sent_at, M.reported_at, M.first_clicked_at),
    M.account_id, reaches=(_attributable_orders,),
)  # fmt: skip
_BY_NAME = {f.name: f for f in (*account_facts.FEEDS, *store_facts.FEEDS, *payment_facts.FEEDS, _DELIVERIES)}
FEEDS: tuple[Feed, ...] = tuple(
    _BY_NAME[name]
    for name in (
        "subscriber_events", "inquiries", "phone_bindings", "orders", "order_events",
        "payment_transactions", "fulfilments", "coupon_uses", "points_holds", "deliveries",
    )
)  # fmt: skip
assert len(FEEDS) == len(_BY_NAME)  # every domain's feed is read, in the order the refresh used


def get(key: str) -> Metric:
    return REGISTRY[key]


def stored_keys() -> list[str]:
    """Metrics with rows in metric_daily."""
    return [k for k, m in REGISTRY.items() if not m.manual]


def as_dicts() -> list[dict[str, Any]]:
    return [
        {
            "key": m.key,
            "unit": m.unit,
            "description": m.description,
            "aggregation": m.agg,
            "kind": "manual" if m.manual else "derived" if m.derived else "sourced",
            "ledger": m.ledger,
            "derived_from": dict(m.derived),
            "has_dimensions": m.dims,
        }
        for m in REGISTRY.values()
    ]
