"""The one interface every payment provider implements (WeChat Pay v3 and v2, Alipay).

Payments' services speak only this: prepare a payment, read a notification and answer it, query,
close, refund, ask about a refund, fetch a day's statement. What differs between providers — wire
formats, what "paid" looks like, how a notification is answered, which credentials it needs —
stays inside each provider's module, chosen through the registry (``payments.providers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, Protocol

from wechat_service.errors import register_upstream_error


class PaymentProviderError(Exception):
    """The provider refused or could not be reached; ``detail["code"]`` is its error code."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def code(self) -> str | None:
        return (self.detail or {}).get("code") if isinstance(self.detail, dict) else None


# Not caught by a caller: a 502 in the one error shape (unreachable: 503).
register_upstream_error(
    PaymentProviderError, "The payment provider", lambda exc: "unreachable" in str(exc).lower()
)


class NotificationError(ValueError):
    """The notification is not the provider's, or not for this merchant: refuse it (4xx)."""


@dataclass(frozen=True)
class Charge:
    """What to ask the payer for: the intent's trade number and amount, what it is, who pays (the
    openid, for WeChat Pay's JSAPI), from where, its validity, where a cashier page returns to."""

    out_trade_no: str
    amount_fen: int
    description: str
    openid: str
    client_ip: str
    starts_at: datetime
    expires_at: datetime
    return_url: str | None = None


@dataclass(frozen=True)
class Checkout:
    """What the payer's client needs: JSAPI parameters (``prepay_id`` among them) or a URL."""

    params: dict[str, Any]
    prepay_id: str | None = None


@dataclass(frozen=True)
class PaymentState:
    """The provider's word on one trade: ``paid`` only when it took exactly ``amount_fen``."""

    state: str  # the provider's own word (SUCCESS, NOTPAY, TRADE_SUCCESS, …), or UNKNOWN
    txn_id: str = ""
    amount_fen: int | None = None
    paid: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RefundState:
    """SUCCESS | PROCESSING | CLOSED | ABNORMAL (WeChat Pay v3's words, for every provider)."""

    status: str
    refund_id: str = ""
    amount_fen: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """A verified notification, in one shape. ``kind``: ``payment`` (paid), ``refund`` (a refund's
    outcome), ``ignore`` (nothing to apply: a failed payment, a state we do not act on) or
    ``invalid`` (verified but unusable: ``problem`` says why; refused so the provider resends)."""

    kind: Literal["payment", "refund", "ignore", "invalid"]
    out_trade_no: str = ""
    txn_id: str = ""
    amount_fen: int = 0
    status: str = ""
    out_refund_no: str = ""
    refund_id: str = ""
    problem: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Incoming:
    """A notification as it arrived over HTTP."""

    headers: dict[str, str]
    body: bytes
    form: dict[str, str]
    refund_path: bool = False  # WeChat Pay v2 sends refund outcomes to their own URL


@dataclass(frozen=True)
class Answer:
    """How the provider wants to be answered: an HTTP status, a body and its content type."""

    status: int
    body: Any  # dict (JSON), str, or None for no body
    mimetype: str = "application/json"


class PaymentProvider(Protocol):
    """One merchant's client at one provider."""

    def prepare(self, charge: Charge) -> Checkout: ...

    def read_notification(self, incoming: Incoming) -> Notice:
        """Verify before parsing (raises NotificationError), then say what it means."""
        ...

    def answer(self, ok: bool, message: str = "") -> Answer:
        """The reply the provider expects: ok stops its resending; not ok makes it send again."""
        ...

    def payment(self, out_trade_no: str, amount_fen: int) -> PaymentState:
        """Ask about a trade; ``paid`` when the provider took exactly ``amount_fen``."""
        ...

    def close_trade(self, out_trade_no: str) -> Literal["closed", "paid"]:
        """Close an unpaid trade: ``paid`` when the provider says it was paid meanwhile."""
        ...

    def refund_money(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int, reason: str
    ) -> RefundState:
        """Ask for a refund (again: the same number is the same refund); where it stands now."""
        ...

    def refund_state(self, *, out_trade_no: str, out_refund_no: str) -> RefundState | None:
        """Where a refund stands; None when the provider never heard of it (ask again)."""
        ...

    def day_statement(self, bill_date: date) -> str:
        """The day's statement as text; empty when there is none."""
        ...


NOT_FOUND = ("ORDER_NOT_EXIST", "ACQ.TRADE_NOT_EXIST", "RESOURCE_NOT_EXISTS")
