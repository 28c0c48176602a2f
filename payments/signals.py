"""What payments announces to the domains above it (blinker signals, DESIGN.md "The ladder").

Receivers connect in their ``init_app``; payments never imports them. Two kinds:

- **In the transaction** — ``intent_succeeded``, ``intent_closed``, ``refund_settled``: sent while
  payments' own change is not yet committed, so a receiver keeping its state consistent with the
  money (an order moving to paid) commits with it or not at all; a receiver's exception rolls the
  whole change back, and the provider's notification is refused (it is sent again).
- **After commit** — ``fund_pool_low``: a notice; it carries everything the alert needs, so a
  receiver reads no payments table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blinker import Namespace

from wechat_service.extensions import after_commit

_signals = Namespace()


@dataclass(frozen=True)
class IntentEvent:
    """What a receiver learns about an intent: its opaque purpose and the money."""

    intent_id: int
    account_id: int
    purpose: str  # e.g. "order:123": only the domain that asked reads it
    out_trade_no: str
    amount_fen: int
    provider_txn_id: str | None = None
    late: bool = False  # paid after it was closed: payments is sending the money back


@dataclass(frozen=True)
class RefundEvent:
    intent_id: int
    purpose: str
    amount_fen: int
    succeeded: bool  # False: it failed at the provider, its reservation released
    full: bool  # the intent's one full refund (what was left), not a partial one
    why: str = ""  # the provider's final state when it failed


intent_succeeded = _signals.signal("intent-succeeded")
"""Sender ``"payments"``, keyword ``event``: an IntentEvent. In the transaction."""

intent_closed = _signals.signal("intent-closed")
"""Sender ``"payments"``, keyword ``event``: an IntentEvent (closed unpaid). In the transaction."""

refund_settled = _signals.signal("refund-settled")
"""Sender ``"payments"``, keyword ``event``: a RefundEvent. In the transaction."""

fund_pool_low = _signals.signal("fund-pool-low")
"""A fund pool crossed its warning or critical threshold. Sender: ``"payments"``; keyword
``alert``: a dict with ``pool_id``, ``account_id``, ``level``, ``balance_fen``, ``template_id``,
``openids`` (the staff to tell) and ``data`` (the template message's fields)."""


def announce_fund_pool_low(alert: dict[str, Any]) -> None:
    """Send ``fund_pool_low`` once the current transaction commits."""
    after_commit(lambda: fund_pool_low.send("payments", alert=alert))


pool_page = _signals.signal("fund-pool-page")
"""A fund pool's console page is being drawn. Sender: ``"payments"``; keywords ``account`` and
``pool``. A receiver returns a section of HTML (``Markup`` rendered from its own template) or
``None``: how the domains above show what draws on the pool."""
