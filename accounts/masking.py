"""Personal data as a role may see it: masked unless the role allows, or an audited reveal."""

from __future__ import annotations

import re
from typing import Any

# Free text is matched on a copy where full-width digits and punctuation are folded to ASCII one
# character for one, so a match's positions are the original's and the original's own characters
# (full-width or not, separators and all) are kept around the masked digits.
_FOLD = str.maketrans(
    {
        **{chr(0xFF10 + i): str(i) for i in range(10)},  # ０-９
        "\uff0b": "+",
        "\uff0d": "-",
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\uff0e": ".",
        "\u3002": ".",
        "\u3000": " ",
        "\u00a0": " ",
        "\uff08": "(",
        "\uff09": ")",
    }
)
_SEP = r"[ .\-]"
# A mainland mobile number: 1[3-9] and nine more digits, written 3-4-4 with an optional separator
# (space, hyphen, dot) between the groups, after an optional +86 / 0086 / (+86) / 86 prefix.
# Never part of a longer digit run: order numbers, amounts and dates keep their digits.
MOBILE = re.compile(
    rf"(?<![0-9])(?:(?:\+|00)?86{_SEP}?|\(\+?86\){_SEP}?)?"
    rf"(?P<head>1[3-9][0-9]){_SEP}?(?P<middle>[0-9]{{4}}){_SEP}?(?P<tail>[0-9]{{4}})(?![0-9])"
)
# A resident identity number: region, a birth date 18xx-20xx, sequence, check digit (or X);
# written whole or as 6-8-4 with separators.
RESIDENT_ID = re.compile(
    rf"(?<![0-9])(?P<head>[1-9][0-9]{{5}}){_SEP}?"
    rf"(?P<middle>(?:18|19|20)[0-9]{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]){_SEP}?[0-9]{{2}})"
    rf"(?P<tail>[0-9][0-9Xx])(?![0-9A-Za-z])"
)


def mask_id(value: str | None) -> str | None:
    if not value:
        return value
    return value[:4] + "****" + value[-4:] if len(value) > 10 else "****"


# A bank card: 16-19 digits (whole, or in groups of four) that pass the Luhn check.
CARD = re.compile(rf"(?<![0-9])[0-9]{{4}}(?:{_SEP}?[0-9]){{12,15}}(?![0-9])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _star(chars: list[str], folded: str, start: int, end: int) -> None:
    for i in range(start, end):
        if "0" <= folded[i] <= "9":
            chars[i] = "*"


def mask_text(value: str | None) -> str | None:
    """Mobile numbers (138****8000, the writer's layout kept), identity numbers and card numbers
    inside free text; other numbers — order numbers, amounts, dates — stay readable."""
    if not value:
        return value
    folded = value.translate(_FOLD)
    chars = list(value)
    for pattern in (MOBILE, RESIDENT_ID):
        for m in pattern.finditer(folded):
            _star(chars, folded, m.start("middle"), m.end("middle"))
    for m in CARD.finditer(folded):
        digits = re.sub(r"[^0-9]", "", m.group(0))
        if _luhn(digits):  # first four and last four digits stay
            at = [m.start() + i for i, c in enumerate(m.group(0)) if "0" <= c <= "9"]
            _star(chars, folded, at[4], at[-4])
    return "".join(chars)


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
