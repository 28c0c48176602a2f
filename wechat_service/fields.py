"""marshmallow field types every schema uses for text, dates and months (query arguments, JSON
bodies, forms): input the database or the code behind cannot take is refused at the door, with a
400 naming the field, and the OpenAPI document says so (a pattern, a range)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from marshmallow import fields, validate

# C0 controls (NUL first: PostgreSQL refuses it in text), DEL, and lone surrogates (not encodable
# as UTF-8). Multi-line text keeps tab, newline and carriage return.
_SINGLE_LINE_BAD = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_MULTILINE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
SINGLE_LINE_PATTERN = r"^[^\u0000-\u001f\u007f]*$"
MULTILINE_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]*$"

# Text with something in it (not only spaces), and no control characters: one pattern, so the
# document states both rules.
NOT_BLANK = validate.Regexp(
    r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$", error="must not be blank"
)
NOT_BLANK_MULTILINE = validate.Regexp(
    r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]*\S[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]*$",
    error="must not be blank",
)

# Dates the service deals in: anything outside is a typo or a probe, and a range built on it
# would run for minutes (a day-by-day report from 1670).
MIN_DATE = dt.date(2000, 1, 1)
MAX_DATE = dt.date(2099, 12, 31)
_DATE_PATTERN = r"^20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
MONTH_PATTERN = r"^20\d\d-(0[1-9]|1[0-2])$"


class Text(fields.String):
    """A string without control characters (``multiline=True`` allows tab, CR and LF)."""

    default_error_messages = {"control": "Must not contain control characters."}

    def __init__(self, *args: Any, multiline: bool = False, **kwargs: Any) -> None:
        self.multiline = multiline
        metadata = dict(kwargs.pop("metadata", None) or {})
        validators = kwargs.get("validate")
        has_pattern = any(
            isinstance(v, validate.Regexp)
            for v in (validators if isinstance(validators, list | tuple) else [validators])
        )
        if not has_pattern:  # a field's own pattern already excludes control characters
            metadata.setdefault("pattern", MULTILINE_PATTERN if multiline else SINGLE_LINE_PATTERN)
        super().__init__(*args, metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if (_MULTILINE_BAD if self.multiline else _SINGLE_LINE_BAD).search(text):
            raise self.make_error("control")
        return text


def clean_text(value: str, *, multiline: bool = False) -> bool:
    """True when ``value`` has no character a :class:`Text` field refuses."""
    return not (_MULTILINE_BAD if multiline else _SINGLE_LINE_BAD).search(value)


class Day(fields.Date):
    """An ISO date between 2000-01-01 and 2099-12-31."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata.setdefault("pattern", _DATE_PATTERN)
        super().__init__(*args, metadata=metadata, **kwargs)
        self.validators.insert(0, validate.Range(min=MIN_DATE, max=MAX_DATE))


class Instant(fields.AwareDateTime):
    """A timezone-aware ISO date-time in the years 2000–2099 (UTC conversion cannot overflow; the
    bounds leave a day either side so every offset of a documented value is accepted)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata.setdefault("pattern", r"^20\d\d-")
        super().__init__(*args, metadata=metadata, **kwargs)
        self.validators.insert(
            0,
            validate.Range(
                min=dt.datetime(1999, 12, 31, tzinfo=dt.UTC), max=dt.datetime(2100, 1, 2, tzinfo=dt.UTC)
            ),
        )


def decimal(minimum: Any, maximum: Any, *, exclusive_minimum: bool = False, **kwargs: Any) -> fields.Decimal:
    """An exact decimal (sent as a number or a string, loaded as Decimal, 4 places) within a range
    the document states as numbers."""
    metadata = {"minimum": float(minimum), "maximum": float(maximum)}
    if exclusive_minimum:
        metadata["exclusiveMinimum"] = True
    return fields.Decimal(
        as_string=True,
        places=4,
        metadata=metadata,
        validate=validate.Range(min=minimum, max=maximum, min_inclusive=not exclusive_minimum),
        **kwargs,
    )


class Month(Text):
    """``YYYY-MM`` (2000-01 … 2099-12), loaded as that string."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["validate"] = [validate.Regexp(MONTH_PATTERN, error="a month as YYYY-MM")]
        super().__init__(*args, **kwargs)
