"""Posting one notification the way payment providers do: once, or several copies — one after
another, or all at once (several of their servers racing each other)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests


def copies_of(data: dict[str, Any]) -> int:
    return max(1, min(int(data.get("copies", 1)), 100))


def post_copies(
    url: str,
    body: bytes | str,
    headers: dict[str, str],
    copies: int,
    concurrent: bool,
    read: Callable[[requests.Response], Any] = lambda r: r.status_code,
    unreachable: Any = 0,
) -> list[Any]:
    """What the receiver answered to each copy (``read`` of the response, or ``unreachable``)."""
    answers: list[Any] = []

    def post() -> None:
        try:
            answers.append(read(requests.post(url, data=body, headers=headers, timeout=10)))
        except requests.RequestException:
            answers.append(unreachable)

    threads = [threading.Thread(target=post) for _ in range(copies)]
    for t in threads:
        t.start()
        if not concurrent:
            t.join()
    for t in threads:
        t.join()
    return answers
