"""What the store announces to the domains above it (blinker signals, DESIGN.md "The ladder").

The store never imports an upper domain: it sends, and the upper domain connects a receiver in
its ``init_app``. Both signals here are after-commit notices — a rolled-back change announces
nothing — so receivers only enqueue or notify; nothing that must stay consistent hangs on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from blinker import Namespace

from wechat_service.extensions import after_commit

_signals = Namespace()

order_moved = _signals.signal("order-moved")
"""An order changed status. Sender: ``"store"``; keyword ``notice``: an :class:`OrderNotice` as a
dict (everything a subscriber's notice needs, so a receiver reads no store table)."""


@dataclass(frozen=True)
class OrderNotice:
    order_id: int
    account_id: int
    subscriber_id: int
    status: str
    out_trade_no: str
    amount_fen: int
    product_name: str


def announce_order_moved(notice: OrderNotice) -> None:
    """Send ``order_moved`` once the current transaction commits."""
    data: dict[str, Any] = asdict(notice)
    after_commit(lambda: order_moved.send("store", notice=data))
