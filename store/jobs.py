"""RQ jobs of the store: thin wrappers over services, ids in."""

from __future__ import annotations

from store import services
from store.models import InquiryKind
from wechat_service.extensions import db


def answer_inquiry(account_id: int, subscriber_id: int, kind: str) -> str:
    text = services.answer_later(account_id, subscriber_id, InquiryKind(kind))
    db.session.commit()
    return text
