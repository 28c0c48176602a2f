"""RQ jobs of the store: thin wrappers over services, ids in."""

from __future__ import annotations

import logging

from rq import Retry

from store import fulfilment, redemption, services
from store.models import InquiryKind
from wechat_service.extensions import db, get_queue

log = logging.getLogger(__name__)
# Transient BOSS trouble: back off, then the cron sweep takes over.
RETRY = Retry(max=5, interval=[2, 10, 30, 120, 600])


def answer_inquiry(account_id: int, subscriber_id: int, kind: str) -> str:
    text = services.answer_later(account_id, subscriber_id, InquiryKind(kind))
    db.session.commit()
    return text


def fulfil(fulfilment_id: int) -> str:
    """Carry a fulfilment out; a transient failure raises, and RQ retries with backoff."""
    status = fulfilment.run(fulfilment_id)
    message = redemption.settle(fulfilment_id)
    db.session.commit()
    if message:
        _notify(fulfilment_id, message)
    return status.value


def _notify(fulfilment_id: int, text: str) -> None:
    """The receipt, as a customer-service message; a subscriber out of reach is not an error."""
    from accounts.services import api_client
    from accounts.subscribers import subscriber_by_id
    from store.models import Fulfilment
    from wechat_service.gateway import WeChatAPIError

    job = db.session.get(Fulfilment, fulfilment_id)
    try:
        openid = subscriber_by_id(job.account_id, job.subscriber_id).openid
        api_client(job.account_id).message.send_text(openid, text)
    except WeChatAPIError as exc:
        log.info("receipt for fulfilment %s not delivered: %s", fulfilment_id, exc)


def sweep_fulfilments() -> int:
    """Cron: fulfilments left open (retries exhausted, job lost) are tried again."""
    ids = fulfilment.stale()
    for fid in ids:
        get_queue("default").enqueue(fulfil, fid, retry=RETRY)
    return len(ids)
