"""Personal data as a role may see it: masked unless the role allows, or an audited reveal."""

from __future__ import annotations

import re
from typing import Any

DIGITS = re.compile(r"\d{7,}")


def mask_id(value: str | None) -> str | None:
    if not value:
        return value
    return value[:4] + "****" + value[-4:] if len(value) > 10 else "****"


def mask_text(value: str | None) -> str | None:
    """Long digit runs (phone and ID numbers) inside free text."""
    if not value:
        return value
    return DIGITS.sub(lambda m: m.group(0)[:3] + "*" * (len(m.group(0)) - 5) + m.group(0)[-2:], value)


def mask_detail(kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    """Coordinates hidden; every free-text value (message, voice transcript, place label, link
    title …) with its long digit runs masked."""
    out = dict(detail)
    for key, value in detail.items():
        if key in ("Latitude", "Longitude", "Precision", "Location_X", "Location_Y") and value:
            out[key] = "**"
        elif isinstance(value, str) and key not in ("type", "rule", "by", "reply"):
            out[key] = mask_text(value)
    return out


def subscriber_view(sub: Any, unmasked: bool) -> dict[str, Any]:
    """A subscriber as the console and API show it to a role."""
    show = (lambda v: v) if unmasked else mask_id
    return {
        "id": sub.id,
        "openid": show(sub.openid),
        "unionid": show(sub.unionid),
        "following": sub.following,
        "first_followed_at": sub.first_followed_at,
        "last_followed_at": sub.last_followed_at,
        "last_unfollowed_at": sub.last_unfollowed_at,
        "subscribe_scene": sub.subscribe_scene,
        "qr_scene": sub.qr_scene,
        "channel_id": sub.channel_id,
        "last_interaction_at": sub.last_interaction_at,
        "masked": not unmasked,
    }


def event_view(event: Any, unmasked: bool) -> dict[str, Any]:
    return {
        "kind": event.kind.value,
        "occurred_at": event.occurred_at,
        "channel_id": event.channel_id,
        "detail": event.detail if unmasked else mask_detail(event.kind.value, event.detail),
    }
