"""Posting one notification the way payment providers do: once, or several copies — one after
another, or all at once (several of their servers racing each other)."""

from __future__ import annotations

import threading
import time
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


# When a notification is not acknowledged, the provider tries again later (seconds after the
# previous attempt). Tests compress the schedule with ``retry_factor`` (e.g. 0.001).
WECHATPAY_RETRIES = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
ALIPAY_RETRIES = (240, 600, 600, 3600, 7200, 21600, 54000)


def retry_later(
    url: str,
    body: bytes | str,
    headers: dict[str, str],
    schedule: tuple[int, ...],
    factor: float,
    acknowledged: Callable[[requests.Response], bool],
    log: list[Any],
) -> threading.Thread:
    """Resend on the provider's schedule until acknowledged or the schedule runs out; each
    attempt's answer (or 0 when unreachable) is appended to ``log``."""

    def run() -> None:
        for delay in schedule:
            time.sleep(delay * factor)
            try:
                resp = requests.post(url, data=body, headers=headers, timeout=10)
            except requests.RequestException:
                log.append(0)
                continue
            log.append(resp.status_code)
            if acknowledged(resp):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
