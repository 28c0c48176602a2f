"""Keyword auto-replies, welcome and default replies, served from a per-process cache.

The cache is keyed by the account's ``config_version``, which every rule change bumps in the
same transaction, so every process sees a change on its next callback.

Regex rules are written by operators, so they are checked when saved (length, no nested
quantifiers, adversarial probes under a tiny timeout) and, in case a slow one is in the database
anyway, one message's regex rules share one time budget (``REPLY_REGEX_BUDGET``); a pattern that
uses up its whole share is recorded and skipped by this process until the rules change. The
matching releases the GIL, so one account's patterns do not hold other requests' threads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import regex
import sqlalchemy as sa
from flask import current_app, has_app_context

from accounts.models import MatchMode, ReplyRule, ReplyType, RuleKind
from accounts.services import bump_config, get_scoped, scoped
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db, get_redis
from wechat_service.router import Reply

MAX_TEXT_BYTES = 2048  # WeChat truncates passive text replies past this
MAX_REGEX = 200
MAX_MATCH_TEXT = 2000
REGEX_BUDGET = 0.08  # all regex rules of one message (config REPLY_REGEX_BUDGET)
PATTERN_TIMEOUT = 0.02  # one pattern's share; a sound keyword pattern takes microseconds
PROBE_TIMEOUT = 0.01  # each adversarial probe when a pattern is saved
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
        """Exact and contains rules; regex rules go through ``match_text``'s budget."""
        folded = text.strip().casefold()
        if self.mode is MatchMode.exact:
            return folded in self.keywords
        if self.mode is MatchMode.contains:
            return any(k in folded for k in self.keywords)
        return False


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
            problem = pattern_problem(w)
            if problem:
                raise InvalidInputError(f"regex {w!r}: {problem}", fields={"keywords": [problem]})
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
    _forget_slow(account_id, rule_id)
    return rule


def delete_rule(account_id: int, rule_id: int) -> None:
    db.session.delete(get_scoped(ReplyRule, account_id, rule_id))
    bump_config(account_id)
    db.session.flush()
    _forget_slow(account_id, rule_id)


def rules_query(account_id: int) -> sa.Select[Any]:
    return scoped(ReplyRule, account_id).order_by(ReplyRule.kind, ReplyRule.priority.desc(), ReplyRule.id)


def list_rules(account_id: int) -> list[ReplyRule]:
    return list(db.session.scalars(rules_query(account_id)))


# -- regex rules: checked when saved, bounded when matched ---------------------------------------

_C = re._constants  # type: ignore[attr-defined]


def _nested_repeat(items: Any, inside_repeat: bool = False) -> bool:
    """A repeated part that itself repeats (``(a+)+``, ``(\\w+\\s?)*``): the classic shape of
    catastrophic backtracking. Possessive and atomic parts never backtrack and are fine."""
    for op, av in items:
        inside = inside_repeat
        if op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            lo, hi, sub = av
            if inside_repeat and lo != hi:  # a fixed count inside, (\d{3}){2}, is no choice
                return True
            children, inside = [sub], inside_repeat or hi > 1
        elif op is _C.SUBPATTERN:
            children = [av[-1]]
        elif op is _C.BRANCH:
            children = av[1]
        elif op in (_C.ASSERT, _C.ASSERT_NOT):
            children = [av[1]]
        else:
            continue
        if any(_nested_repeat(child, inside) for child in children):
            return True
    return False


def _probes(pattern: str) -> list[str]:
    """Texts that make a backtracking pattern struggle: one character of the pattern (or a common
    one) repeated to the longest text matched, then a character that ends no match."""
    chars = dict.fromkeys("a1 中x")
    chars.update(dict.fromkeys(c for c in pattern if c.isalnum() or c == " "))
    return [c * (MAX_MATCH_TEXT - 1) + "\x00" for c in list(chars)[:16]]


def pattern_problem(pattern: str) -> str | None:
    """Why an operator's pattern may not be saved, or None: too long, not a regex, nested
    quantifiers, or slow on adversarial texts."""
    if len(pattern) > MAX_REGEX:
        return f"at most {MAX_REGEX} characters"
    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        return f"not a valid regex: {exc}"
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
    except (re.error, RecursionError):
        parsed = None  # syntax only the regex module knows (\p{Han} …): the probes decide
    if parsed is not None and _nested_repeat(parsed.data):
        return "nested quantifiers such as (a+)+ can take exponential time; simplify the pattern"
    for probe in _probes(pattern):
        try:
            compiled.search(probe, timeout=PROBE_TIMEOUT)
        except TimeoutError:
            return "too slow on long messages (catastrophic backtracking); simplify the pattern"
    return None


def _patterns(keywords: list[str]) -> tuple[regex.Pattern[str], ...]:
    out = []
    for k in keywords:
        try:
            out.append(regex.compile(k))
        except regex.error:  # validated at save time; a Python upgrade must not break every reply
            continue
    return tuple(out)


@dataclass
class _Compiled:
    """One account's rules at one config version, and the regex rules found too slow."""

    version: int
    rules: list[CompiledRule]
    slow: set[int] = field(default_factory=set)


_cache: dict[int, _Compiled] = {}
_lock = threading.Lock()


def _compiled(account_id: int, config_version: int) -> _Compiled:
    hit = _cache.get(account_id)
    if hit and hit.version == config_version:
        return hit
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
    entry = _Compiled(config_version, rules)
    with _lock:
        _cache[account_id] = entry
    return entry


def compiled_rules(account_id: int, config_version: int) -> list[CompiledRule]:
    return _compiled(account_id, config_version).rules


def _budget() -> float:
    if has_app_context():
        return float(current_app.config.get("REPLY_REGEX_BUDGET", REGEX_BUDGET))
    return REGEX_BUDGET


def _slow_key(account_id: int) -> str:
    return f"replies:slow:{account_id}"


def _record_slow(account_id: int, rule: CompiledRule, pattern: str) -> None:
    """Logged, and noted in Redis for the console's rule list; the rule is skipped from now on."""
    log.warning(
        "account %s: regex rule %r (%s) timed out; skipped until the rules change",
        account_id,
        rule.name,
        pattern,
    )
    with contextlib.suppress(redis.RedisError):
        get_redis().hset(_slow_key(account_id), str(rule.id), int(time.time()))


def slow_rule_ids(account_id: int) -> set[int]:
    """Rules whose pattern timed out on a message (shown in the console)."""
    try:
        return {int(k) for k in get_redis().hkeys(_slow_key(account_id))}
    except redis.RedisError:
        return set()


def _forget_slow(account_id: int, rule_id: int) -> None:
    with contextlib.suppress(redis.RedisError):
        get_redis().hdel(_slow_key(account_id), str(rule_id))


def _regex_matches(account_id: int, entry: _Compiled, rule: CompiledRule, text: str, deadline: float) -> bool:
    text = text[:MAX_MATCH_TEXT]
    for pattern in rule.patterns:
        left = deadline - time.monotonic()
        if left <= 0:
            return False  # this message's budget is spent: the remaining regex rules do not match
        share = min(PATTERN_TIMEOUT, left)
        try:
            # concurrent: the GIL is released, so other threads (other accounts' callbacks) run.
            if pattern.search(text, timeout=share, concurrent=True) is not None:
                return True
        except TimeoutError:
            if share >= PATTERN_TIMEOUT:  # slow on its own, not just the budget's last crumbs
                entry.slow.add(rule.id)
                _record_slow(account_id, rule, pattern.pattern)
            return False
    return False


def match_text(
    account_id: int, config_version: int, text: str, now: datetime | None = None
) -> CompiledRule | None:
    """The rule that answers ``text``: the highest-priority active keyword rule, else the default.

    All regex rules of the message share one budget; a rule found slow is skipped."""
    now = now or utcnow()
    entry = _compiled(account_id, config_version)
    deadline = time.monotonic() + _budget()
    rules = [r for r in entry.rules if r.active(now)]
    for rule in rules:
        if rule.kind is not RuleKind.keyword:
            continue
        if rule.mode is MatchMode.regex:
            if rule.id not in entry.slow and _regex_matches(account_id, entry, rule, text, deadline):
                return rule
        elif rule.matches(text):
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
