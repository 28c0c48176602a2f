"""The click redirect ``/t/<token>``: records the click on its delivery, then goes to the target.

The token is the delivery id and an HMAC of it, so no token table is needed and a guessed id
does not verify."""

from __future__ import annotations

import hashlib
import hmac

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, redirect
from flask.typing import ResponseReturnValue

from templates_msg.models import Campaign, Delivery
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import step_boundary
from wechat_service.extensions import db

bp = Blueprint("templates_msg_tracking", __name__)


def _mac(delivery_id: int) -> str:
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, f"tm-click:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:16]


def token_for(delivery_id: int) -> str:
    return f"{delivery_id:x}.{_mac(delivery_id)}"


def delivery_of(token: str) -> int | None:
    head, _, mac = token.partition(".")
    try:
        delivery_id = int(head, 16)
    except ValueError:
        return None
    return delivery_id if 0 < delivery_id < 2**62 and hmac.compare_digest(mac, _mac(delivery_id)) else None


def record_click(delivery_id: int) -> str | None:
    """Count the click and return where it goes (None: no such delivery or no link)."""
    now = utcnow()
    row = db.session.execute(
        sa.update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(clicks=Delivery.clicks + 1, first_clicked_at=sa.func.coalesce(Delivery.first_clicked_at, now))
        .returning(Delivery.campaign_id, Delivery.payload)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    if row.campaign_id is not None:
        return db.session.scalar(sa.select(Campaign.link_url).where(Campaign.id == row.campaign_id))
    return (row.payload or {}).get("url")


@step_boundary("a request (the subscriber's click): recorded before the redirect")
@bp.get("/t/<token>")
def click(token: str) -> ResponseReturnValue:
    delivery_id = delivery_of(token)
    if delivery_id is None:
        abort(404)
    target = record_click(delivery_id)
    db.session.commit()
    if not target:
        abort(404)
    return redirect(target, code=302)
