"""Money is integer fen everywhere; these are the only places it becomes yuan text and back."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# What staff type for a yuan amount in a form: digits, at most two decimals, no sign or exponent.
YUAN_RE = re.compile(r"^\d{1,7}(\.\d{1,2})?$")


def yuan(fen: int | None, *, short: bool = False) -> str:
    """1990 → '19.90', -150 → '-1.50' (integer arithmetic, never a float); ``short`` drops '.00'."""
    fen = int(fen or 0)
    whole, cents = divmod(abs(fen), 100)
    text = f"{'-' if fen < 0 else ''}{whole}"
    return text if short and not cents else f"{text}.{cents:02d}"


def fen_of(text: str) -> int:
    """'19.9' → 1990 exactly (through Decimal); ValueError for anything that is not a whole number
    of fen ('1.234', 'NaN', '1e3' is allowed by Decimal but callers may refuse it first)."""
    try:
        amount = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{text!r} is not an amount") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not an amount")
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of fen")
    return int(fen)


def yuan_to_fen(text: str) -> int:
    """'19.90' → 1990, as staff type it in a form. Raises ValueError for anything but a plain
    yuan amount."""
    text = (text or "").strip()
    if not YUAN_RE.match(text):
        raise ValueError(text)
    return fen_of(text)


def fen_to_yuan(fen: int | None) -> str:
    """1990 → '19.90' (for refilling a form; integer arithmetic, no float)."""
    return "" if fen is None else yuan(fen)
