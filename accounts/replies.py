"""Keyword auto-replies, welcome and default replies, served from a per-process cache.

The cache is keyed by the account's ``config_version``, which every rule change bumps in the
same transaction, so every process sees a change on its next callback.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import regex
import sqlalchemy as sa

from accounts.models import MatchMode, ReplyRule, ReplyType, RuleKind
from accounts.services import bump_config, get_scoped, scoped
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db
from wechat_service.router import Reply

MAX_TEXT_BYTES = 2048  # WeChat truncates passive text replies past this
MAX_REGEX = 200
MAX_MATCH_TEXT = 2000
REGEX_TIMEOUT = 0.05
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledRule:
    id: int
    name: str
    kind: RuleKind
    keywords: tuple[str, ...]
    mode: MatchMode
    patterns: tuple[regex.Pattern[str], ...]
    active_from: datetime | None
    active_until: datetime | None
    reply: Reply

    def active(self, now: datetime) -> bool:
        return (self.active_from is None or now >= self.active_from) and (
            self.active_until is None or now < self.active_until
        )

    def matches(self, text: str) -> bool:
        folded = text.strip().casefold()
        if self.mode is MatchMode.exact:
            return folded in self.keywords
        if self.mode is MatchMode.contains:
            return any(k in folded for k in self.keywords)
        return any(_search(p, text) for p in self.patterns)


def validate_reply(reply_type: str, reply: dict[str, Any]) -> tuple[ReplyType, dict[str, Any]]:
    try:
        rtype = ReplyType(reply_type)
    except ValueError:
        raise InvalidInputError(
            "reply_type must be text, news or image", fields={"reply_type": ["invalid"]}
        ) from None
    if rtype is ReplyType.text:
        content = str(reply.get("content") or "")
        if not content.strip():
            raise InvalidInputError("a text reply needs content", fields={"reply": ["content required"]})
        if len(content.encode()) > MAX_TEXT_BYTES:
            raise InvalidInputError(
                f"text reply longer than {MAX_TEXT_BYTES} bytes", fields={"reply": ["too long"]}
            )
        return rtype, {"content": content}
    if rtype is ReplyType.image:
        if not reply.get("media_id"):
            raise InvalidInputError(
                "an image reply needs a media_id", fields={"reply": ["media_id required"]}
            )
        return rtype, {"media_id": str(reply["media_id"])}
    articles = reply.get("articles") or []
    if (
        not isinstance(articles, list)
        or not 1 <= len(articles) <= 8
        or not all(isinstance(a, dict) and a.get("title") and a.get("url") for a in articles)
    ):
        raise InvalidInputError(
            "a news reply needs 1-8 articles with a title and a url", fields={"reply": ["articles invalid"]}
        )
    keep = ("title", "description", "url", "image")
    return rtype, {"articles": [{k: str(a.get(k, "")) for k in keep} for a in articles]}


def add_rule(
    account_id: int,
    *,
    name: str,
    kind: str = "keyword",
    keywords: list[str] | None = None,
    match_mode: str = "exact",
    priority: int = 0,
    reply_type: str = "text",
    reply: dict[str, Any],
    active_from: datetime | None = None,
    active_until: datetime | None = None,
) -> ReplyRule:
    try:
        kind_enum, mode = RuleKind(kind), MatchMode(match_mode)
    except ValueError:
        raise InvalidInputError("unknown rule kind or match mode") from None
    if not (name or "").strip() or len(name) > 128:
        raise InvalidInputError("a name of 1 to 128 characters", fields={"name": ["invalid"]})
    if not isinstance(priority, int) or not -1_000_000 <= priority <= 1_000_000:
        raise InvalidInputError(
            "priority between -1,000,000 and 1,000,000", fields={"priority": ["out of range"]}
        )
    words = [w.strip() for w in (keywords or []) if w and w.strip()]
    if len(words) > 50 or any(len(w) > 200 for w in words):
        raise InvalidInputError("at most 50 keywords of 200 characters", fields={"keywords": ["too long"]})
    if kind_enum is RuleKind.keyword and not words:
        raise InvalidInputError("a keyword rule needs keywords", fields={"keywords": ["required"]})
    if mode is MatchMode.regex:
        for w in words:
            if len(w) > MAX_REGEX:
                raise InvalidInputError("regex too long", fields={"keywords": [f"at most {MAX_REGEX} chars"]})
            try:
                regex.compile(w)
            except regex.error as exc:
                raise InvalidInputError(
                    f"invalid regex {w!r}: {exc}", fields={"keywords": ["bad regex"]}
                ) from None
    if active_from and active_until and active_until <= active_from:
        raise InvalidInputError(
            "active_until must be after active_from", fields={"active_until": ["invalid"]}
        )
    rtype, body = validate_reply(reply_type, reply)
    rule = ReplyRule(
        account_id=account_id,
        name=name,
        kind=kind_enum,
        keywords=words,
        match_mode=mode,
        priority=priority,
        reply_type=rtype,
        reply=body,
        active_from=active_from,
        active_until=active_until,
        enabled=True,
    )
    db.session.add(rule)
    bump_config(account_id)
    db.session.flush()
    return rule


def set_rule_enabled(account_id: int, rule_id: int, enabled: bool) -> ReplyRule:
    rule = get_scoped(ReplyRule, account_id, rule_id)
    rule.enabled = enabled
    bump_config(account_id)
    db.session.flush()
    return rule


def delete_rule(account_id: int, rule_id: int) -> None:
    db.session.delete(get_scoped(ReplyRule, account_id, rule_id))
    bump_config(account_id)
    db.session.flush()


def rules_query(account_id: int) -> sa.Select[Any]:
    return scoped(ReplyRule, account_id).order_by(ReplyRule.kind, ReplyRule.priority.desc(), ReplyRule.id)


def list_rules(account_id: int) -> list[ReplyRule]:
    return list(db.session.scalars(rules_query(account_id)))


def _search(pattern: regex.Pattern[str], text: str) -> bool:
    """Operators write these patterns; a catastrophic one must not hold a callback: the `regex`
    engine gives up after REGEX_TIMEOUT and the rule simply does not match."""
    try:
        return pattern.search(text[:MAX_MATCH_TEXT], timeout=REGEX_TIMEOUT) is not None
    except TimeoutError:
        log.warning("regex rule %r timed out; treated as no match", pattern.pattern)
        return False


def _patterns(keywords: list[str]) -> tuple[regex.Pattern[str], ...]:
    out = []
    for k in keywords:
        try:
            out.append(regex.compile(k))
        except regex.error:  # validated at save time; a Python upgrade must not break every reply
            continue
    return tuple(out)


_cache: dict[int, tuple[int, list[CompiledRule]]] = {}
_lock = threading.Lock()


def compiled_rules(account_id: int, config_version: int) -> list[CompiledRule]:
    hit = _cache.get(account_id)
    if hit and hit[0] == config_version:
        return hit[1]
    rows = db.session.scalars(
        scoped(ReplyRule, account_id)
        .where(ReplyRule.enabled.is_(True))
        .order_by(ReplyRule.priority.desc(), ReplyRule.id)
    ).all()
    rules = [
        CompiledRule(
            id=r.id,
            name=r.name,
            kind=r.kind,
            keywords=tuple(k.strip().casefold() for k in r.keywords),
            mode=r.match_mode,
            # Each keyword its own pattern: joined ones could clash (inline flags, group names).
            patterns=_patterns(r.keywords) if r.match_mode is MatchMode.regex else (),
            active_from=r.active_from,
            active_until=r.active_until,
            reply=Reply(r.reply_type.value, dict(r.reply)),
        )
        for r in rows
    ]
    with _lock:
        _cache[account_id] = (config_version, rules)
    return rules


def match_text(
    account_id: int, config_version: int, text: str, now: datetime | None = None
) -> CompiledRule | None:
    """The rule that answers ``text``: the highest-priority active keyword rule, else the default."""
    now = now or utcnow()
    rules = [r for r in compiled_rules(account_id, config_version) if r.active(now)]
    for rule in rules:
        if rule.kind is RuleKind.keyword and rule.matches(text):
            return rule
    return next((r for r in rules if r.kind is RuleKind.default), None)


def welcome_rule(account_id: int, config_version: int) -> CompiledRule | None:
    now = utcnow()
    return next(
        (
            r
            for r in compiled_rules(account_id, config_version)
            if r.kind is RuleKind.welcome and r.active(now)
        ),
        None,
    )


def rule_count(account_id: int) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count()).select_from(ReplyRule).where(ReplyRule.account_id == account_id)
        )
        or 0
    )
