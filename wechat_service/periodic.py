"""Periodic jobs, declared by each domain in its ``init_app`` and run by the cron process.

The base owns the list; a domain adds its own jobs to it (the callback router's pattern), so
the cron process never names a domain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask


@dataclass(frozen=True)
class PeriodicJob:
    func: Callable[..., Any]
    queue: str
    interval: int | None = None  # seconds
    cron: str | None = None  # a cron line, matched in UTC (the cron process runs on UTC)
    job_timeout: int = 120


def declare(
    app: Flask,
    func: Callable[..., Any],
    queue: str,
    *,
    interval: int | None = None,
    cron: str | None = None,
    job_timeout: int = 120,
) -> None:
    """Declare ``func`` to run every ``interval`` seconds or on ``cron``, on ``queue``."""
    if (interval is None) == (cron is None):
        raise ValueError("a periodic job runs on an interval or a cron line, exactly one")
    app.extensions.setdefault("periodic_jobs", []).append(
        PeriodicJob(func, queue, interval=interval, cron=cron, job_timeout=job_timeout)
    )


def declared(app: Flask) -> list[PeriodicJob]:
    """Every periodic job the domains declared, in declaration order."""
    return list(app.extensions.get("periodic_jobs", []))
