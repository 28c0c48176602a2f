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
    out = dict(detail)
    if kind == "location":
        for key in ("Latitude", "Longitude"):
            if out.get(key):
                out[key] = "**"
    if "content" in out:
        out["content"] = mask_text(out["content"])
    return out
