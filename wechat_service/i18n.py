"""Language and time for people (DESIGN.md "Console, H5 and language"): Flask-Babel, zh_CN by
default, English per staff member (their preference) and by ``Accept-Language`` before sign-in.

The base knows no staff: the domain that signs people in registers where a preference comes from
(``prefer``). Msgids are English; the catalogue is ``wechat_service/translations`` (``.po`` and the
compiled ``.mo`` are committed; ``scripts/i18n`` extracts, updates and compiles them).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from flask import Flask, current_app, g, has_request_context, request
from flask_babel import Babel, LazyString, get_locale, lazy_gettext

TRANSLATIONS = Path(__file__).parent / "translations"
DEFAULT_LOCALE = "zh_CN"
DEFAULT_TIMEZONE = "Asia/Shanghai"
LOCALES: dict[str, str] = {"zh_CN": "中文", "en": "English"}  # each named in its own language

babel = Babel()

Preference = Callable[[], str | None]


def prefer(app: Flask, kind: str, fn: Preference) -> None:
    """Where a person's choice comes from (``kind``: ``locale`` or ``timezone``), e.g. the signed-in
    staff member's profile; None when there is no one or no choice."""
    app.extensions.setdefault("i18n_preferences", {}).setdefault(kind, []).append(fn)


def _preferred(kind: str) -> str | None:
    for fn in current_app.extensions.get("i18n_preferences", {}).get(kind, []):
        value = fn()
        if value:
            return value
    return None


def select_locale() -> str:
    """This request's language: set for the request (``use``), the person's preference, what the
    browser asks for among ours, else Chinese."""
    if not has_request_context():
        return DEFAULT_LOCALE
    chosen = g.get("locale") or _preferred("locale")
    if chosen in LOCALES:
        return str(chosen)
    asked = request.accept_languages.best_match(["zh_CN", "zh", "en"])
    if asked is None:
        return DEFAULT_LOCALE
    return "en" if asked == "en" else "zh_CN"


def select_timezone() -> str:
    return (_preferred("timezone") if has_request_context() else None) or DEFAULT_TIMEZONE


def use(locale: str) -> None:
    """Speak ``locale`` for the rest of this request (e.g. right after a person changed it)."""
    from flask_babel import refresh

    g.locale = locale if locale in LOCALES else DEFAULT_LOCALE
    refresh()


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LOCALE)
    app.config.setdefault("BABEL_DEFAULT_TIMEZONE", "UTC")  # stored times are UTC; shown per person
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(TRANSLATIONS))
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_timezone)

    @app.context_processor
    def _language() -> dict[str, Any]:
        return {"current_locale": current_locale(), "locales": LOCALES}


def current_locale() -> str:
    """Ours (zh_CN or en), not Babel's name for it (zh_Hans_CN)."""
    locale = get_locale()
    return "en" if locale is not None and locale.language == "en" else DEFAULT_LOCALE


class TitledEnum(enum.StrEnum):
    """An enum that carries its human titles (STYLE.md #25): ``__titles__`` maps members to
    ``lazy_gettext`` strings; pages and exports print ``.title``, never the value."""

    __titles__: ClassVar[dict[str, LazyString]] = {}

    @property
    def title(self) -> str:  # type: ignore[override]  # str.title() is shadowed on purpose
        titles: dict[str, Any] = getattr(type(self), "__titles__", {})
        return str(titles.get(str(self), str(self)))


_ = lazy_gettext
