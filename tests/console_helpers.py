"""Signing staff in through the real login form, with the real CSRF token."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

TOKEN_RE = re.compile(r'name="csrf-token" content="([^"]+)"|name="csrf_token" value="([^"]+)"')
PASSWORD = "a long enough password 1"


def page_token(body: str) -> str:
    match = TOKEN_RE.search(body)
    assert match, "no CSRF token on the page"
    return match.group(1) or match.group(2)


class Staff:
    """A signed-in test client with its CSRF token at hand."""

    def __init__(self, app: Flask, username: str, password: str = PASSWORD) -> None:
        self.client = app.test_client()
        self.username = username
        resp = self.client.get("/console/login")
        token = page_token(resp.get_data(as_text=True))
        resp = self.client.post(
            "/console/login", data={"username": username, "password": password, "csrf_token": token}
        )
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        self.refresh_token()

    def refresh_token(self) -> None:
        """The session is renewed on sign-in and password change, and its CSRF token with it."""
        self.token = self.client.get("/api/v1/session").get_json()["csrf_token"]

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def form(self, url: str, data: dict[str, Any] | None = None) -> Any:
        return self.client.post(url, data={**(data or {}), "csrf_token": self.token})

    def api(self, method: str, url: str, json: Any = None) -> Any:
        return self.client.open(url, method=method, json=json, headers={"X-CSRFToken": self.token})
