"""What templates_msg hooks into: the callback router (delivery reports, subscribe popups —
registered by importing ``reports``). Order notices are asked for by the store itself
(``transactional.order_changed``, from ``store.orders.transition``)."""

from __future__ import annotations

from templates_msg import reports  # noqa: F401 - registers the callback handlers
