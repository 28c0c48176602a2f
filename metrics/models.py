"""Metric tables: daily rollups (derived, rebuildable), refresh watermarks, the datacube check,
and the money side — contracts, their payment periods, targets, manual figures, adjustments."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wechat_service.dbtypes import UTCDateTime, utcnow
from wechat_service.extensions import Model
from wechat_service.models import BigId, str_enum


class MetricDaily(Model):
    """One metric of one account on one local day (the account's timezone); ``dim`` splits a metric
    (e.g. follows per channel QR code), '' is the total. Zero values are not stored. Derived from
    the ledgers only: `wechat-service metrics rebuild` recreates any range identically."""

    __tablename__ = "metric_daily"
    __table_args__ = (sa.Index("ix_metric_daily_metric_day", "metric", "day"),)

    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(sa.String(48), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    dim: Mapped[str] = mapped_column(sa.String(64), primary_key=True, default="")
    value: Mapped[int] = mapped_column(sa.BigInteger)


class MetricActiveDay(Model):
    """A subscriber who did something themselves on a local day: distinct active subscribers over
    any period are counted from here (a sum of daily counts would count someone twice). Derived
    from the ledger like metric_daily, and rewritten with it."""

    __tablename__ = "metric_active_days"

    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class MetricWatermark(Model):
    """How far the incremental refresh has read one ledger (by primary key, or for deliveries by
    their change sequence); the row ``definitions`` holds the definitions version the rollups were
    last recomputed under."""

    __tablename__ = "metric_watermarks"

    feed: Mapped[str] = mapped_column(sa.String(48), primary_key=True)
    last_id: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MetricReconciliation(Model):
    """Our follows/unfollows/cumulative followers for a day against WeChat's datacube figures."""

    __tablename__ = "metric_reconciliations"
    __table_args__ = (sa.UniqueConstraint("account_id", "day", "metric"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    day: Mapped[date] = mapped_column(sa.Date)
    metric: Mapped[str] = mapped_column(sa.String(48))
    ours: Mapped[int] = mapped_column(sa.BigInteger)
    theirs: Mapped[int] = mapped_column(sa.BigInteger)
    diff: Mapped[int] = mapped_column(sa.BigInteger)  # ours − theirs
    flagged: Mapped[bool] = mapped_column(default=False)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FeeFormula(enum.StrEnum):
    linear = "linear"  # variable share × weighted attainment, capped at 100 %
    tiered = "tiered"  # params {"tiers": [{"min": "1.00", "pay": "1.00"}, {"min": "0.90", "pay": "0.80"}]}
    floor = "floor"  # params {"floor": "0.60"}: below it nothing, above it linear (capped)


class Contract(Model):
    """What the operator pays its service provider: a fixed share and a variable share on results."""

    __tablename__ = "metric_contracts"
    __table_args__ = (
        sa.CheckConstraint("price_fen > 0", name="price_positive"),
        sa.CheckConstraint("fixed_share >= 0 AND fixed_share <= 1", name="share_range"),
        sa.CheckConstraint("starts_on < ends_on", name="period_ordered"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(128))
    # The part of the matrix the contract covers (None: the whole matrix).
    org_unit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("org_units.id"), index=True)
    starts_on: Mapped[date] = mapped_column(sa.Date)
    ends_on: Mapped[date] = mapped_column(sa.Date)  # inclusive
    price_fen: Mapped[int] = mapped_column(sa.BigInteger)
    fixed_share: Mapped[Decimal] = mapped_column(sa.Numeric(5, 4))
    formula: Mapped[FeeFormula] = mapped_column(str_enum(FeeFormula, 16))
    formula_params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    schedule: Mapped[str] = mapped_column(sa.String(16), default="quarterly")
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PeriodStatus(enum.StrEnum):
    open = "open"
    closed = "closed"


class ContractPeriod(Model):
    """One payment period of a contract (a quarter). Closing freezes its figures and fee in
    ``snapshot``; afterwards only adjustment entries change what is owed."""

    __tablename__ = "metric_contract_periods"
    __table_args__ = (sa.UniqueConstraint("contract_id", "starts_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contract_id: Mapped[int] = mapped_column(
        sa.ForeignKey("metric_contracts.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int]  # 1-based position in the schedule
    label: Mapped[str] = mapped_column(sa.String(32))
    starts_on: Mapped[date] = mapped_column(sa.Date)
    ends_on: Mapped[date] = mapped_column(sa.Date)
    status: Mapped[PeriodStatus] = mapped_column(str_enum(PeriodStatus, 16), default=PeriodStatus.open)
    fee_fen: Mapped[int | None] = mapped_column(sa.BigInteger)  # frozen at closing
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    # The metric definitions (metrics.registry.DEFINITIONS_VERSION) the frozen figures used; an open
    # period shows the current ones.
    definitions: Mapped[int | None]


class Target(Model):
    """A target for one metric over a month or quarter, for an account or an org unit, weighted."""

    __tablename__ = "metric_targets"
    __table_args__ = (
        sa.CheckConstraint("(account_id IS NULL) <> (org_unit_id IS NULL)", name="one_scope"),
        sa.CheckConstraint("target_value > 0", name="target_positive"),
        sa.CheckConstraint("weight > 0", name="weight_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contract_id: Mapped[int] = mapped_column(
        sa.ForeignKey("metric_contracts.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[str] = mapped_column(sa.String(48))
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    org_unit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("org_units.id", ondelete="CASCADE"))
    starts_on: Mapped[date] = mapped_column(sa.Date)
    ends_on: Mapped[date] = mapped_column(sa.Date)
    target_value: Mapped[Decimal] = mapped_column(sa.Numeric(18, 4))
    weight: Mapped[Decimal] = mapped_column(sa.Numeric(8, 4), default=Decimal(1))
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ManualValue(Model):
    """A figure no ledger holds (e.g. the on-site support quality score), entered in the console.
    Append-only: a correction is a new row; the latest row for (metric, scope, period) counts."""

    __tablename__ = "metric_manual_values"
    __table_args__ = (
        sa.CheckConstraint("(account_id IS NULL) <> (org_unit_id IS NULL)", name="one_scope"),
        sa.Index("ix_metric_manual_values_lookup", "metric", "starts_on"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    metric: Mapped[str] = mapped_column(sa.String(48))
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    org_unit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("org_units.id", ondelete="CASCADE"))
    starts_on: Mapped[date] = mapped_column(sa.Date)
    ends_on: Mapped[date] = mapped_column(sa.Date)
    value: Mapped[Decimal] = mapped_column(sa.Numeric(18, 4))
    note: Mapped[str] = mapped_column(sa.String(500), default="")
    entered_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PeriodAdjustment(Model):
    """A correction to a closed period's fee: explicit, signed, with its reason."""

    __tablename__ = "metric_period_adjustments"
    __table_args__ = (sa.CheckConstraint("amount_fen <> 0", name="amount_nonzero"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    period_id: Mapped[int] = mapped_column(
        sa.ForeignKey("metric_contract_periods.id", ondelete="CASCADE"), index=True
    )
    amount_fen: Mapped[int] = mapped_column(sa.BigInteger)
    reason: Mapped[str] = mapped_column(sa.String(500))
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
