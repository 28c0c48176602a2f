"""The callback event router: a registry of handlers by (message type, event).

Domain packages register into ``router`` from their ``handlers`` module (imported by
``create_app``). Inline handlers run inside the callback request's transaction and may return a
passive reply; deferred handlers run later in an RQ job keyed by the inbox row id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wechatpy.replies import ArticlesReply, ImageReply, TextReply


@dataclass(frozen=True)
class AccountInfo:
    """What a callback needs of an account; cached per process by (id, config_version)."""

    id: int
    appid: str
    original_id: str | None
    kind: str
    message_mode: str
    status: str
    timezone: str
    config_version: int
    token: str | None
    aes_keys: tuple[str, ...]  # current first, then the previous one during a rotation


@dataclass
class Reply:
    type: str  # text, image, news
    data: dict[str, Any]

    def render(self, account: AccountInfo, openid: str) -> str:
        # wechatpy's reply classes default CreateTime to import time: always pass it.
        common = {"source": account.original_id or account.appid, "target": openid, "time": int(time.time())}
        if self.type == "text":
            return TextReply(content=self.data["content"], **common).render()
        if self.type == "image":
            return ImageReply(media_id=self.data["media_id"], **common).render()
        if self.type == "news":
            articles = [
                {
                    "title": a.get("title", ""),
                    "description": a.get("description", ""),
                    "image": a.get("image", ""),
                    "url": a.get("url", ""),
                }
                for a in self.data["articles"][:8]
            ]
            return ArticlesReply(articles=articles, **common).render()
        raise ValueError(f"unknown reply type {self.type}")


@dataclass
class CallbackContext:
    account: AccountInfo
    message: dict[str, str]
    msg_type: str
    event: str | None
    inbox_id: int | None = None  # None while inline handlers run: the inbox row is written after them
    reply: Reply | None = None  # the first reply a handler gave; later handlers see it
    replied_by: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # handlers share results (e.g. the subscriber)
    # The console's "try a message": handlers decide the reply as usual but write nothing, call no
    # outside system and queue no job; they say what they would have done with ``would``.
    dry_run: bool = False
    actions: list[str] = field(default_factory=list)
    _after_store: list[Callable[[int], None]] = field(default_factory=list)

    def would(self, action: str) -> None:
        self.actions.append(action)

    def on_stored(self, write: Callable[[int], None]) -> None:
        """Run ``write(inbox_id)`` once the inbox row exists, in the same transaction."""
        if self.inbox_id is not None:
            write(self.inbox_id)
        else:
            self._after_store.append(write)

    def stored(self, inbox_id: int) -> None:
        self.inbox_id = inbox_id
        for write in self._after_store:
            write(inbox_id)
        self._after_store.clear()

    @property
    def openid(self) -> str:
        return self.message.get("FromUserName", "")

    @property
    def occurred_at(self) -> datetime:
        try:
            return datetime.fromtimestamp(int(self.message.get("CreateTime", "")), UTC)
        except ValueError:
            return datetime.now(UTC)


HandlerFn = Callable[[CallbackContext], Reply | None]


@dataclass(frozen=True)
class Handler:
    fn: HandlerFn
    inline: bool
    priority: int


class Router:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str | None], list[Handler]] = {}

    def register(
        self, msg_type: str, event: str | None = None, *, inline: bool = True, priority: int = 0
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register a handler; higher priority runs first and the first reply returned wins."""
        key = (msg_type.lower(), event.lower() if event else None)

        def decorator(fn: HandlerFn) -> HandlerFn:
            handlers = self._handlers.setdefault(key, [])
            if all(h.fn is not fn for h in handlers):
                handlers.append(Handler(fn, inline, priority))
                handlers.sort(key=lambda h: -h.priority)
            return fn

        return decorator

    def handlers(self, msg_type: str, event: str | None) -> list[Handler]:
        return self._handlers.get((msg_type.lower(), event.lower() if event else None), [])


router = Router()


class AccountDirectory:
    """How the callback endpoint finds an account. The tenant root (``accounts``) registers its
    look-ups in its ``init_app``: the base never imports a domain."""

    def __init__(self) -> None:
        self._by_appid: Callable[[str], AccountInfo | None] | None = None
        self._by_id: Callable[[int], AccountInfo | None] | None = None

    def register(
        self, by_appid: Callable[[str], AccountInfo | None], by_id: Callable[[int], AccountInfo | None]
    ) -> None:
        self._by_appid, self._by_id = by_appid, by_id

    def by_appid(self, appid: str) -> AccountInfo | None:
        if self._by_appid is None:
            raise RuntimeError("no account directory: accounts.init_app registers it")
        return self._by_appid(appid)

    def by_id(self, account_id: int) -> AccountInfo | None:
        if self._by_id is None:
            raise RuntimeError("no account directory: accounts.init_app registers it")
        return self._by_id(account_id)


directory = AccountDirectory()
