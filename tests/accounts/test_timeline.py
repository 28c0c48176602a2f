"""The subscriber's timeline: accounts owns the registry, each domain contributes its entries
(accounts its event ledger, the store orders/inquiries/the bound phone, templates_msg the messages
sent and clicked), merged newest first and masked unless revealed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from accounts import timeline
from accounts.models import EventKind, SubscriberEvent
from store.models import Inquiry, InquiryKind, InquiryOutcome
from templates_msg.models import Delivery, DeliveryStatus
from tests import factories
from wechat_service.dbtypes import utcnow
from wechat_service.extensions import db

OPENID = "oTIMELINE00000001"


@pytest.fixture
def story(app: Flask, simulator: str) -> dict[str, Any]:
    """One subscriber: followed 4 h ago, asked their balance 3 h ago, ordered 2 h ago, got a
    template message 1 h ago and clicked it 30 min ago; phone bound just now (with the shop)."""
    shop = factories.shop(
        simulator, product={"code": "t30", "price_fen": 2990, "face_value_fen": 3000}, openid=OPENID,
        phone="13800139333",
    )  # fmt: skip
    account, sub, now = shop["account"], shop["sub"], utcnow()
    db.session.add(
        SubscriberEvent(
            account_id=account.id, subscriber_id=sub.id, kind=EventKind.follow,
            occurred_at=now - timedelta(hours=4), detail={"scene": "qrscene_1"},
        )
    )  # fmt: skip
    db.session.add(
        Inquiry(
            account_id=account.id, subscriber_id=sub.id, kind=InquiryKind.balance, source="chat",
            outcome=InquiryOutcome.answered, latency_ms=40, at=now - timedelta(hours=3),
        )
    )  # fmt: skip
    order = factories.order(sub, shop["product"], "timeline-key-0001")
    order.created_at = now - timedelta(hours=2)
    db.session.add(
        Delivery(
            account_id=account.id, subscriber_id=sub.id, openid=OPENID, kind="order_paid",
            status=DeliveryStatus.sent, sent_at=now - timedelta(hours=1), created_at=now - timedelta(hours=1),
            first_clicked_at=now - timedelta(minutes=30), clicks=1, attempts=1,
        )
    )  # fmt: skip
    db.session.commit()
    return {**shop, "order": order}


def test_every_domain_contributes_newest_first(story: dict[str, Any]) -> None:
    entries = timeline.of(story["account"].id, story["sub"].id)
    assert [(e.source, e.kind) for e in entries] == [
        ("phone", "phone.bound"),  # bound as the shop was made: the newest
        ("messages", "message.clicked"),
        ("messages", "message.sent"),
        ("orders", "order.pending_payment"),
        ("inquiries", "inquiry.balance"),
        ("events", "follow"),
    ]
    assert entries[3].detail["out_trade_no"] == story["order"].out_trade_no
    assert "29.90" in entries[3].summary
    assert {e.source for e in entries} == {"messages", "orders", "inquiries", "events", "phone"}
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    assert len(timeline.of(story["account"].id, story["sub"].id, limit=2)) == 2


def test_the_phone_is_masked_unless_revealed(story: dict[str, Any]) -> None:
    def phone(unmasked: bool) -> str:
        (entry,) = [
            e
            for e in timeline.of(story["account"].id, story["sub"].id, unmasked=unmasked)
            if e.source == "phone"
        ]
        return entry.summary

    assert phone(False) == "138****9333"
    assert phone(True) == "13800139333"


def test_the_subscriber_page_shows_the_timeline(story: dict[str, Any], create_staff: Any) -> None:
    support = create_staff("support", account_id=story["account"].id)
    page = support.get(f"/console/accounts/{story['account'].id}/subscribers/{story['sub'].id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "Timeline" in text
    for shown in ("message.clicked", "order.pending_payment", "inquiry.balance", story["order"].out_trade_no):
        assert shown in text
    assert "138****9333" in text and "13800139333" not in text
