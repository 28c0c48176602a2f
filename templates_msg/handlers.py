"""What templates_msg hooks into: the callback router (reports, subscribe popups — registered by
importing ``reports``) and order notices."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from store.models import OrderEvent
from templates_msg import reports  # noqa: F401 - registers the callback handlers
from wechat_service.extensions import enqueue_after_commit


@event.listens_for(OrderEvent, "after_insert")
def _order_notice(_mapper: Any, _connection: Any, target: OrderEvent) -> None:
    # Every order transition writes an OrderEvent in its transaction; listening here sends the
    # notice after that commit without the store importing the campaign engine. (An explicit
    # call from store/orders.transition would be clearer; that file is the store's.)
    if target.to_status in ("paid", "fulfilled", "refunded"):
        from templates_msg import jobs

        enqueue_after_commit("high", jobs.notify_order, target.order_id, target.to_status)
