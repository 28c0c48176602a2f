"""What payments announces to the domains above it (blinker signals, DESIGN.md "The ladder").

Receivers connect in their ``init_app``; payments never imports them. ``fund_pool_low`` is an
after-commit notice: it carries everything the alert needs, so a receiver reads no payments table.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace

from wechat_service.extensions import after_commit

_signals = Namespace()

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
