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
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement, FromClause

from accounts.models import EventKind, SubscriberEvent
from payments.models import PaymentTransaction, TxnKind
from store.models import (
    CouponUse,
    Fulfilment,
    Inquiry,
    InquiryOutcome,
    Order,
    OrderEvent,
    PhoneBinding,
    PointsHold,
)
from templates_msg.models import Campaign, Delivery, ReportStatus
from templates_msg.reports import attributed, plus_days
from wechat_service.extensions import db

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
class Bucket:
    """Accounts of one timezone and a UTC range [start, end) in which the local day of a
    timestamp is ``timestamp + offset`` (constant UTC offset), or always ``day`` (a day on which
    the offset changes, e.g. daylight saving)."""

    account_ids: tuple[int, ...]
    start: datetime
    end: datetime
    offset: int | None
    day: date | None
    dialect: str

    def day_of(self, col: Any) -> ColumnElement[Any]:
        if self.day is not None:  # inlined: a bound parameter cannot be grouped by on PostgreSQL
            fixed = sa.literal_column(f"'{self.day.isoformat()}'", sa.String)
            return sa.cast(fixed, sa.Date) if self.dialect == "postgresql" else fixed
        if self.dialect == "postgresql":
            return sa.cast(
                sa.func.timezone("UTC", col) + sa.literal(timedelta(seconds=self.offset or 0), sa.Interval),
                sa.Date,
            )
        return sa.func.date(col, f"{self.offset or 0:+d} seconds")

    def grouped(
        self,
        account_col: Any,
        time_col: Any,
        value: ColumnElement[Any],
        *filters: ColumnElement[bool],
        dim: ColumnElement[Any] | None = None,
        select_from: FromClause | None = None,
    ) -> sa.Select[Any]:
        """``value`` per account, local day (and ``dim``) over rows of this bucket."""
        day = self.day_of(time_col).label("day")
        dim_col = (sa.cast(dim, sa.String) if dim is not None else sa.literal("", sa.String)).label("dim")
        query = sa.select(account_col.label("account_id"), day, dim_col, value.label("value"))
        if select_from is not None:
            query = query.select_from(select_from)
        return query.where(
            account_col.in_(self.account_ids), time_col >= self.start, time_col < self.end, *filters
        ).group_by(account_col, day, dim_col)


Source = Callable[[Bucket], sa.Select[Any]]


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


COUNT = sa.func.count()
E = SubscriberEvent


def _events(b: Bucket, *filters: ColumnElement[bool], dim: Any = None) -> sa.Select[Any]:
    return b.grouped(E.account_id, E.occurred_at, COUNT, *filters, dim=dim)


# -- the subscriber ledger (bucketed by WeChat's CreateTime, so a late callback lands in its day) --


@sourced(
    "follows",
    "subscribers",
    "Follow events (plain and through a QR code, re-follows included).",
    ledger="subscriber_events",
)
def _follows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow)


@sourced("unfollows", "subscribers", "Unfollow events.", ledger="subscriber_events")
def _unfollows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.unfollow)


@sourced(
    "re_follows",
    "subscribers",
    "Follows by a subscriber who had followed this account before (any earlier follow event).",
    ledger="subscriber_events",
)
def _re_follows(b: Bucket) -> sa.Select[Any]:
    earlier = sa.orm.aliased(SubscriberEvent)
    before = (
        sa.select(earlier.id)
        .where(
            earlier.subscriber_id == E.subscriber_id,
            earlier.kind == EventKind.follow,
            sa.or_(
                earlier.occurred_at < E.occurred_at,
                sa.and_(earlier.occurred_at == E.occurred_at, earlier.id < E.id),
            ),
        )
        .exists()
    )
    return _events(b, E.kind == EventKind.follow, before)


@sourced("qr_follows", "subscribers", "Follows through a channel QR code.", ledger="subscriber_events")
def _qr_follows(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow, E.channel_id.is_not(None))


@sourced(
    "follows_by_channel",
    "subscribers",
    "Follows per channel QR code (dimension: channel id).",
    ledger="subscriber_events",
    dims=True,
)
def _follows_by_channel(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.follow, E.channel_id.is_not(None), dim=E.channel_id)


@sourced("scans", "events", "QR-code scans by subscribers already following.", ledger="subscriber_events")
def _scans(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.scan)


@sourced(
    "menu_clicks", "events", "Menu clicks and menu links opened (CLICK and VIEW).", ledger="subscriber_events"
)
def _menu_clicks(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind.in_([EventKind.click, EventKind.view]))


@sourced("messages", "messages", "Messages subscribers sent (text, image, …).", ledger="subscriber_events")
def _messages(b: Bucket) -> sa.Select[Any]:
    return _events(b, E.kind == EventKind.message)


# Things a subscriber does themselves. LOCATION is reported by the client on its own (every few
# seconds while the chat is open, if allowed) and UNFOLLOW ends the relation: neither is activity.
ACTIVE_KINDS = (EventKind.follow, EventKind.scan, EventKind.click, EventKind.view, EventKind.message)


def active_days(b: Bucket) -> sa.Select[Any]:
    """(account_id, day, subscriber_id) once per active subscriber per local day: what
    metric_active_days keeps, so a period's distinct actives never double-count across days."""
    day = b.day_of(E.occurred_at).label("day")
    return (
        sa.select(E.account_id, day, E.subscriber_id)
        .where(
            E.account_id.in_(b.account_ids),
            E.occurred_at >= b.start,
            E.occurred_at < b.end,
            E.kind.in_(ACTIVE_KINDS),
        )
        .group_by(E.account_id, day, E.subscriber_id)
    )


@sourced(
    "active_subscribers",
    "subscribers",
    "Distinct subscribers who did something themselves (followed, scanned, clicked or opened a "
    "menu, sent a message); automatic location reports and unfollows are not activity. Over a "
    "period: distinct subscribers in the whole period (one who was active on 20 days counts once).",
    agg=DISTINCT,
    ledger="subscriber_events",
)
def _active(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        E.account_id, E.occurred_at, sa.func.count(sa.distinct(E.subscriber_id)), E.kind.in_(ACTIVE_KINDS)
    )


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

Q = Inquiry


@sourced(
    "inquiries", "inquiries", "Balance/data/bill/points inquiries, every one counted.", ledger="inquiries"
)
def _inquiries(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT)


@sourced(
    "inquiries_answered",
    "inquiries",
    "Inquiries answered at once (fresh or from the cache).",
    ledger="inquiries",
)
def _inquiries_answered(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        Q.account_id, Q.at, COUNT, Q.outcome.in_([InquiryOutcome.answered, InquiryOutcome.cached])
    )


@sourced(
    "inquiries_deferred",
    "inquiries",
    "Inquiries answered later (the BOSS was slower than the budget).",
    ledger="inquiries",
)
def _inquiries_deferred(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, Q.outcome == InquiryOutcome.deferred)


@sourced("inquiries_failed", "inquiries", "Inquiries that failed.", ledger="inquiries")
def _inquiries_failed(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, Q.outcome == InquiryOutcome.failed)


@sourced(
    "inquiries_by_kind",
    "inquiries",
    "Inquiries per kind (dimension: balance, data, bill, points).",
    ledger="inquiries",
    dims=True,
)
def _inquiries_by_kind(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Q.account_id, Q.at, COUNT, dim=Q.kind)


@sourced(
    "phones_bound",
    "subscribers",
    "Phone numbers bound (by SMS code or WeChat's phone button).",
    ledger="phone_bindings",
)
def _phones_bound(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PhoneBinding.account_id, PhoneBinding.bound_at, COUNT)


@sourced("orders_created", "orders", "Orders placed (paid or not).", ledger="orders")
def _orders_created(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, Order.created_at, COUNT)


_ORDER_HISTORY = sa.join(OrderEvent, Order, OrderEvent.order_id == Order.id)


def _order_transitions(b: Bucket, status: str) -> sa.Select[Any]:
    return b.grouped(
        Order.account_id, OrderEvent.at, COUNT, OrderEvent.to_status == status, select_from=_ORDER_HISTORY
    )


@sourced("orders_paid", "orders", "Orders that became paid (order history).", ledger="order_events")
def _orders_paid(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "paid")


@sourced("orders_fulfilled", "orders", "Orders carried out by the BOSS.", ledger="order_events")
def _orders_fulfilled(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "fulfilled")


@sourced("orders_refunded", "orders", "Orders refunded in full.", ledger="order_events")
def _orders_refunded(b: Bucket) -> sa.Select[Any]:
    return _order_transitions(b, "refunded")


T = PaymentTransaction
# Money for an unknown order or of a wrong amount is an anomaly (sent back, or refused): not revenue.
_PAYMENT = sa.and_(T.kind == TxnKind.payment, T.anomaly.is_(None), T.order_id.is_not(None))
_REFUND = sa.and_(
    T.kind == TxnKind.refund, T.anomaly.is_(None), T.order_id.is_not(None), T.status == "SUCCESS"
)


# Money counts when the provider moved it (its success_time / time_end / gmt_payment /
# gmt_refund_pay, kept as moved_at), on the account's local day — the day the provider's statement
# and our reconciliation put it on — not when we happened to record the notification.


@sourced(
    "paid_transactions",
    "transactions",
    "Payments the providers confirmed (anomalies excluded), on the day of the provider's payment "
    "time in the account's timezone.",
    ledger="payment_transactions",
)
def _paid_transactions(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, COUNT, _PAYMENT)


@sourced(
    "gmv_fen",
    "fen",
    "Gross merchandise value: money paid, on the day of the provider's payment time (as in its "
    "statement and our reconciliation), in the account's timezone.",
    ledger="payment_transactions",
)
def _gmv(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, sa.func.sum(T.amount_fen), _PAYMENT)


@sourced(
    "refunds",
    "transactions",
    "Refunds the providers carried out, on the day the refund succeeded (not the day of the sale).",
    ledger="payment_transactions",
)
def _refunds(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, COUNT, _REFUND)


@sourced(
    "refunds_fen",
    "fen",
    "Money refunded, on the day the refund succeeded (not the day of the sale).",
    ledger="payment_transactions",
)
def _refunds_fen(b: Bucket) -> sa.Select[Any]:
    return b.grouped(T.account_id, T.moved_at, sa.func.sum(T.amount_fen), _REFUND)


derived(
    "net_revenue_fen",
    "fen",
    "GMV − refunds. Refunds count on the day they succeeded, so a period in which earlier sales "
    "were refunded can be negative.",
    {"gmv_fen": 1, "refunds_fen": -1},
)


F = Fulfilment
_REDEMPTION = F.source == "redemption"


def _earlier_attempt(row: Any) -> Any:
    """An attempt of the same code before ``row`` (by time, then id)."""
    earlier = sa.orm.aliased(Fulfilment)
    return (
        sa.select(earlier.id)
        .where(
            earlier.source == "redemption",
            earlier.source_id == row.source_id,
            sa.or_(
                earlier.created_at < row.created_at,
                sa.and_(earlier.created_at == row.created_at, earlier.id < row.id),
            ),
        )
        .exists()
    )


@sourced(
    "redemptions",
    "codes",
    "Redeem codes redeemed: once per code, on the day it was first redeemed, however often its "
    "fulfilment was retried (or the code given back after a failure and redeemed again).",
    ledger="fulfilments",
)
def _redemptions(b: Bucket) -> sa.Select[Any]:
    return b.grouped(F.account_id, F.created_at, COUNT, _REDEMPTION, ~_earlier_attempt(F))


_COUPON_ORDERS = sa.join(CouponUse, Order, CouponUse.order_id == Order.id)


@sourced("coupon_uses", "coupons", "Coupons applied to orders.", ledger="coupon_uses")
def _coupon_uses(b: Bucket) -> sa.Select[Any]:
    return b.grouped(Order.account_id, CouponUse.created_at, COUNT, select_from=_COUPON_ORDERS)


@sourced("coupon_discount_fen", "fen", "Discount granted by coupons.", ledger="coupon_uses")
def _coupon_discount(b: Bucket) -> sa.Select[Any]:
    return b.grouped(
        Order.account_id,
        CouponUse.created_at,
        sa.func.sum(CouponUse.discount_fen),
        select_from=_COUPON_ORDERS,
    )


@sourced("points_exchanges", "exchanges", "Products exchanged for points.", ledger="points_holds")
def _points_exchanges(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PointsHold.account_id, PointsHold.created_at, COUNT)


@sourced("points_spent", "points", "Points debited for exchanges.", ledger="points_holds")
def _points_spent(b: Bucket) -> sa.Select[Any]:
    return b.grouped(PointsHold.account_id, PointsHold.created_at, sa.func.sum(PointsHold.points))


manual("support_quality", "score", "On-site support quality score (0–100), entered in the console.")


# -- campaigns (templates_msg) ---------------------------------------------------------------------
# A delivery row changes as it goes (sent, reported, clicked): each metric buckets by the time of
# its own step, and the refresh re-reads deliveries by their change sequence (FEEDS below).

M = Delivery
_CAMPAIGN = sa.and_(M.kind == "campaign", M.control.is_(False))


@sourced(
    "campaign_sends", "messages", "Campaign template messages WeChat accepted (a msgid).", ledger="deliveries"
)
def _campaign_sends(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, _CAMPAIGN, M.sent_at.is_not(None))


@sourced(
    "campaign_deliveries",
    "messages",
    "Campaign messages WeChat reported delivered (TEMPLATESENDJOBFINISH success), on the report's day.",
    ledger="deliveries",
)
def _campaign_deliveries(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.reported_at, COUNT, _CAMPAIGN, M.report == ReportStatus.delivered)


@sourced(
    "campaign_clicks",
    "subscribers",
    "Recipients who clicked a campaign link (first click).",
    ledger="deliveries",
)
def _campaign_clicks(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.first_clicked_at, COUNT, _CAMPAIGN, M.first_clicked_at.is_not(None))


@sourced(
    "transactional_messages",
    "messages",
    "Transactional messages sent (order paid/fulfilled/refunded, fund alerts).",
    ledger="deliveries",
)
def _transactional(b: Bucket) -> sa.Select[Any]:
    return b.grouped(M.account_id, M.sent_at, COUNT, M.kind != "campaign", M.sent_at.is_not(None))


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

Reach = Callable[[Any], sa.Select[Any]]


@dataclass(frozen=True)
class Feed:
    """A ledger read by a monotonic column: rows with ``id_col`` above the watermark are new (or,
    for deliveries, changed); ``changed`` is when it was set (for the safety lag), ``business``
    the times metrics bucket the row by, ``reaches`` selects ``(account_id, first, last)`` business
    times of other rows the new ones (a WHERE clause) change."""

    name: str
    id_col: Any
    changed: Any
    business: tuple[Any, ...]
    account_col: Any
    select_from: Any = None
    reaches: tuple[Reach, ...] = ()


def _later_follows(new: Any) -> sa.Select[Any]:
    later = sa.orm.aliased(SubscriberEvent)
    return (
        sa.select(later.account_id, sa.func.min(later.occurred_at), sa.func.max(later.occurred_at))
        .select_from(E)
        .join(later, sa.and_(later.subscriber_id == E.subscriber_id, later.kind == EventKind.follow))
        .where(new, E.kind == EventKind.follow, later.occurred_at >= E.occurred_at, later.id != E.id)
        .group_by(later.account_id)
    )


def _later_attempts(new: Any) -> sa.Select[Any]:
    later = sa.orm.aliased(Fulfilment)
    return (
        sa.select(later.account_id, sa.func.min(later.created_at), sa.func.max(later.created_at))
        .select_from(F)
        .join(later, sa.and_(later.source == "redemption", later.source_id == F.source_id))
        .where(new, _REDEMPTION, later.created_at >= F.created_at, later.id != F.id)
        .group_by(later.account_id)
    )


def _attributable_orders(new: Any) -> sa.Select[Any]:
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


PB, PH = PhoneBinding, PointsHold
FEEDS: tuple[Feed, ...] = (
    Feed("subscriber_events", E.id, E.recorded_at, (E.occurred_at,), E.account_id, reaches=(_later_follows,)),
    Feed("inquiries", Q.id, Q.at, (Q.at,), Q.account_id),
    Feed("phone_bindings", PB.id, PB.bound_at, (PB.bound_at,), PB.account_id),
    Feed("orders", Order.id, Order.created_at, (Order.created_at,), Order.account_id),
    # A status change moves orders_paid/… on its own day and a conversion on the order's day.
    Feed(
        "order_events", OrderEvent.id, OrderEvent.at, (OrderEvent.at, Order.created_at), Order.account_id,
        _ORDER_HISTORY,
    ),
    Feed("payment_transactions", T.id, T.created_at, (T.moved_at,), T.account_id),
    Feed("fulfilments", F.id, F.created_at, (F.created_at,), F.account_id, reaches=(_later_attempts,)),
    Feed(
        "coupon_uses", CouponUse.id, CouponUse.created_at, (CouponUse.created_at,), Order.account_id,
        _COUPON_ORDERS,
    ),
    Feed("points_holds", PH.id, PH.created_at, (PH.created_at,), PH.account_id),
    # Deliveries change after they are written (sent, reported, clicked): read by the change
    # sequence the database stamps on every insert and update, so a late refresh misses nothing.
    Feed(
        "deliveries", M.change_seq, M.changed_at, (M.sent_at, M.reported_at, M.first_clicked_at),
        M.account_id, reaches=(_attributable_orders,),
    ),
)  # fmt: skip


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
