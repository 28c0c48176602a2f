"""Channel QR codes: parametric codes whose follows and scans are attributed to a channel."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import cast

import sqlalchemy as sa

from accounts.models import ChannelQRCode, EventKind, SubscriberEvent
from accounts.services import api_client, scoped
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, InvalidInputError
from wechat_service.extensions import db

MAX_TEMPORARY_SECONDS = 30 * 24 * 3600
SCENE_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def create_channel_qrcode(
    account_id: int,
    *,
    name: str,
    scene: str,
    channel_type: str = "other",
    permanent: bool = True,
    expire_seconds: int | None = None,
) -> ChannelQRCode:
    if not (name or "").strip() or len(name) > 128:
        raise InvalidInputError("a name of 1 to 128 characters", fields={"name": ["invalid"]})
    if not SCENE_RE.match(scene or ""):
        raise InvalidInputError(
            "scene must be 1-64 letters, digits, '_', '-' or '.'", fields={"scene": ["invalid"]}
        )
    if not permanent:
        expire_seconds = expire_seconds or MAX_TEMPORARY_SECONDS
        if not 60 <= expire_seconds <= MAX_TEMPORARY_SECONDS:
            raise InvalidInputError(
                "a temporary code lives 60 s to 30 days", fields={"expire_seconds": ["out of range"]}
            )
    if db.session.scalar(
        sa.select(ChannelQRCode.id).where(
            ChannelQRCode.account_id == account_id, ChannelQRCode.scene == scene
        )
    ):
        raise ConflictError(f"scene {scene!r} is already used by a channel of this account")
    body: dict = {"action_info": {"scene": {"scene_str": scene}}}
    if permanent:
        body["action_name"] = "QR_LIMIT_STR_SCENE"
    else:
        body["action_name"] = "QR_STR_SCENE"
        body["expire_seconds"] = expire_seconds
    result = api_client(account_id).qrcode.create(body)
    code = ChannelQRCode(
        account_id=account_id,
        name=name,
        channel_type=channel_type,
        scene=scene,
        permanent=permanent,
        expire_seconds=None if permanent else expire_seconds,
        ticket=result.get("ticket"),
        url=result.get("url"),
        expires_at=None
        if permanent
        else utcnow() + timedelta(seconds=int(result.get("expire_seconds") or expire_seconds or 0)),
    )
    db.session.add(code)
    db.session.flush()
    return code


def qrcodes_query(account_id: int) -> sa.Select:
    return scoped(ChannelQRCode, account_id).order_by(ChannelQRCode.id)


def list_channel_qrcodes(account_id: int) -> list[ChannelQRCode]:
    return list(db.session.scalars(scoped(ChannelQRCode, account_id).order_by(ChannelQRCode.id)))


def channel_stats(account_id: int) -> dict[int, dict[str, int]]:
    """Scans and follows per channel QR code, from the ledger."""

    rows = db.session.execute(
        sa.select(SubscriberEvent.channel_id, SubscriberEvent.kind, sa.func.count())
        .where(
            SubscriberEvent.account_id == account_id,
            SubscriberEvent.channel_id.is_not(None),
            SubscriberEvent.kind.in_([EventKind.follow, EventKind.scan]),
        )
        .group_by(SubscriberEvent.channel_id, SubscriberEvent.kind)
    ).all()
    out: dict[int, dict[str, int]] = {}
    for channel_id, kind, n in rows:
        channel = cast(int, channel_id)  # not NULL: the query leaves those out
        out.setdefault(channel, {"follow": 0, "scan": 0})[kind.value] = n
    return out
