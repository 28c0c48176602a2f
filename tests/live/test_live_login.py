"""Review #6: sixteen wrong passwords at once through gunicorn (two workers) reach the password
check at most five times — the attempt is counted in Redis before the password is looked at."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa

from tests.console_helpers import PASSWORD
from tests.live.conftest import Live

PARALLEL = 16


def test_parallel_wrong_passwords_are_checked_at_most_the_limit(live: Live) -> None:
    from accounts import staff
    from accounts.models import AuditLog
    from wechat_service.extensions import db

    def setup() -> None:
        staff.create_user("racer", PASSWORD)
        db.session.commit()

    live.in_app(setup)
    # Each browser with its own session and CSRF token, all posting at the same instant.
    browsers = []
    for _ in range(PARALLEL):
        session = requests.Session()
        page = session.get(f"{live.base}/console/login", timeout=10).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        browsers.append((session, token))
    start = threading.Barrier(PARALLEL)

    def attempt(browser: tuple[requests.Session, str]) -> int:
        session, token = browser
        start.wait()
        data = {"username": "racer", "password": "wrong password!!", "csrf_token": token}
        return session.post(
            f"{live.base}/console/login", data=data, timeout=60, allow_redirects=False
        ).status_code

    with ThreadPoolExecutor(PARALLEL) as pool:
        statuses = list(pool.map(attempt, browsers))
    checked = live.scalar(
        sa.select(sa.func.count())
        .select_from(AuditLog)
        .where(AuditLog.action == "login.failed", AuditLog.target == "racer")
    )
    assert sorted(set(statuses)) == [401, 429], statuses
    assert statuses.count(401) == checked  # every answered "wrong" was one password check
    assert checked <= staff.USER_FAILURES, f"{checked} password checks for a limit of {staff.USER_FAILURES}"
    # And the right password is refused too while the user is locked.
    session, _ = browsers[0]
    page = session.get(f"{live.base}/console/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    resp = session.post(
        f"{live.base}/console/login",
        data={"username": "racer", "password": PASSWORD, "csrf_token": token},
        timeout=30,
        allow_redirects=False,
    )
    assert resp.status_code == 429
