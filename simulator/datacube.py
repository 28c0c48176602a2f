"""WeChat's user analysis (datacube) as the service sees it, computed from the follows and
unfollows the simulator has driven (and the followers it was seeded with), in Beijing days."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from simulator.wechat import authed, body, err, state

bp = Blueprint("sim_datacube", __name__, url_prefix="/wechat/datacube")

BEIJING = timezone(timedelta(hours=8))
MAX_SPAN = 7


def _day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).astimezone(BEIJING).date()


def _range() -> tuple[date, date] | ResponseReturnValue:
    data = body()
    try:
        d0, d1 = date.fromisoformat(str(data["begin_date"])), date.fromisoformat(str(data["end_date"]))
    except (KeyError, ValueError):
        return err(61500, "date format error")
    yesterday = datetime.now(BEIJING).date() - timedelta(days=1)
    if d1 < d0 or (d1 - d0).days >= MAX_SPAN or d1 > yesterday:
        return err(61501, "date range error")
    return d0, d1


@bp.post("/getusersummary")
def user_summary() -> ResponseReturnValue:
    account, error = authed()
    if error is not None:
        return error
    span = _range()
    if not isinstance(span, tuple):
        return span
    d0, d1 = span
    counts: dict[tuple[date, int], dict[str, int]] = defaultdict(lambda: {"new_user": 0, "cancel_user": 0})
    with state().lock:
        log = list(account.follow_log)
    for entry in log:
        day = _day(entry["at"])
        if d0 <= day <= d1 and entry["kind"] in ("follow", "unfollow"):
            source = 30 if entry.get("scene") else 0  # 30: scanned a QR code, 0: other
            counts[(day, source)]["new_user" if entry["kind"] == "follow" else "cancel_user"] += 1
    rows = []
    for i in range((d1 - d0).days + 1):
        day = d0 + timedelta(days=i)
        sources = sorted(s for (d, s) in counts if d == day) or [0]
        for source in sources:
            c = counts.get((day, source), {"new_user": 0, "cancel_user": 0})
            rows.append({"ref_date": day.isoformat(), "user_source": source, **c})
    return jsonify({"list": rows})


@bp.post("/getusercumulate")
def user_cumulate() -> ResponseReturnValue:
    account, error = authed()
    if error is not None:
        return error
    span = _range()
    if not isinstance(span, tuple):
        return span
    d0, d1 = span
    with state().lock:
        log = list(account.follow_log)
    rows = []
    for i in range((d1 - d0).days + 1):
        day = d0 + timedelta(days=i)
        total = sum(1 if e["kind"] in ("follow", "seed") else -1 for e in log if _day(e["at"]) <= day)
        rows.append({"ref_date": day.isoformat(), "cumulate_user": total})
    return jsonify({"list": rows})
