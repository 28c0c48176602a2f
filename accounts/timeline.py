"""A subscriber's timeline: what happened to them across the domains, newest first.

accounts owns the registry; each domain contributes the entries from its own ledgers (the store
its orders and inquiries, the campaign engine the messages sent and clicked) by registering a
function in its ``init_app`` — accounts never reads their tables. A contributor returns at most
``limit`` entries, newest first; the timeline merges them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask, current_app

from accounts import masking, subscribers
from wechat_service.extensions import db


@dataclass(frozen=True)
class Entry:
    at: datetime
    source: str  # the contributing domain's name for its entries: follows, orders, messages…
    kind: str  # what happened, e.g. subscribe, order.fulfilled, message.clicked
    summary: str  # one line a person reads
    detail: dict[str, Any] = field(default_factory=dict)


Contributor = Callable[[int, int, int, bool], list[Entry]]
"""(account_id, subscriber_id, limit, unmasked) → the newest ``limit`` entries, newest first;
personal data (a phone number) masked unless ``unmasked``."""


def contribute(app: Flask, source: str, fn: Contributor) -> None:
    """Register a domain's entries (from its ``init_app``)."""
    app.extensions.setdefault("timeline", {})[source] = fn


def of(account_id: int, subscriber_id: int, *, limit: int = 50, unmasked: bool = False) -> list[Entry]:
    """The newest ``limit`` entries over every contributor."""
    contributors: dict[str, Contributor] = current_app.extensions.get("timeline", {})
    streams = [fn(account_id, subscriber_id, limit, unmasked) for _, fn in sorted(contributors.items())]
    return list(heapq.merge(*streams, key=lambda e: e.at, reverse=True))[:limit]


def follow_events(account_id: int, subscriber_id: int, limit: int, unmasked: bool) -> list[Entry]:
    """The accounts' own part: follows, unfollows, scans, menu clicks, messages (the event ledger)."""
    rows = db.session.scalars(subscribers.events_of(account_id, subscriber_id).limit(limit))
    out = []
    for event in rows:
        view = masking.event_view(event, unmasked)
        detail = {k: v for k, v in (view["detail"] or {}).items() if v not in (None, "")}
        out.append(Entry(event.occurred_at, "events", view["kind"], view["kind"], detail))
    return out
