"""In-memory state of the simulated WeChat, one process, guarded by a lock."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from simulator.driver import Target

TOKEN_TTL = 7200
TOKEN_OVERLAP = 300  # cgi-bin/token keeps the previous token valid this long


@dataclass
class SimAccount:
    appid: str
    secret: str
    token: str = ""
    aes_key: str = ""
    mode: str = "plain"
    callback_url: str = ""
    original_id: str = ""
    kind: str = "service"
    access_token: str | None = None
    access_expires: float = 0.0
    previous_token: str | None = None
    previous_valid_until: float = 0.0
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "token": 0,
            "stable_token": 0,
            "api_calls": 0,
            "callbacks_sent": 0,
            "callback_attempts": 0,
        }
    )
    followers: dict[str, dict[str, Any]] = field(default_factory=dict)  # insertion order = list order
    tags: dict[int, dict[str, Any]] = field(default_factory=dict)
    menu: dict[str, Any] | None = None
    menu_history: list[dict[str, Any]] = field(default_factory=list)
    qrcodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # ticket -> {scene, ...}
    custom_messages: list[dict[str, Any]] = field(default_factory=list)
    template_messages: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    js_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    phone_codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # getPhoneNumber codes
    follow_log: list[dict[str, Any]] = field(default_factory=list)  # for datacube later

    def issue_token(self, keep_previous: bool) -> str:
        now = time.time()
        if keep_previous and self.access_token and self.access_expires > now:
            self.previous_token, self.previous_valid_until = self.access_token, now + TOKEN_OVERLAP
        else:
            self.previous_token, self.previous_valid_until = None, 0.0
        self.access_token = "SIMTOKEN_" + secrets.token_urlsafe(24)
        self.access_expires = now + TOKEN_TTL
        return self.access_token

    def token_state(self, token: str | None) -> int:
        """0 if valid, else the errcode WeChat would answer."""
        now = time.time()
        if not token:
            return 41001
        if token == self.access_token:
            return 0 if self.access_expires > now else 42001
        if token == self.previous_token and self.previous_valid_until > now:
            return 0
        return 40001

    def take_fault(self) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.get("remaining", 1) > 0:
                fault["remaining"] = fault.get("remaining", 1) - 1
                return fault
        self.faults = [f for f in self.faults if f.get("remaining", 1) > 0]
        return None

    def target(self) -> Target:
        """How the simulator reaches the service as this account (callback URL, keys, mode)."""
        return Target(
            appid=self.appid,
            token=self.token,
            aes_key=self.aes_key,
            mode=self.mode,
            callback_url=self.callback_url,
            original_id=self.original_id,
        )



class SimState:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.accounts: dict[str, SimAccount] = {}
        self.next_msgid = int(time.time() * 1000) << 8
        self.service_base = ""

    def account(self, appid: str) -> SimAccount | None:
        return self.accounts.get(appid)

    def msgid(self) -> int:
        with self.lock:
            self.next_msgid += 1
            return self.next_msgid

    def reset(self) -> None:
        with self.lock:
            self.accounts.clear()
