"""The operator's BOSS as docs/boss-api.md defines it: signed requests and answers, idempotent
writes, deterministic subscribers per phone number, SMS codes readable by tests, faults."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

PHONE_RE = re.compile(r"^1[3-9]\d{9}$")


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The contract's signature, written from docs/boss-api.md independently of the client's."""
    digest = hashlib.sha256(body).hexdigest()
    return hmac.new(
        secret.encode(), f"{method}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode(), hashlib.sha256
    ).hexdigest()


bp = Blueprint("sim_boss", __name__, url_prefix="/boss")
admin = Blueprint("sim_boss_admin", __name__, url_prefix="/_sim/boss")

WRITES = {"topup", "data-package", "plan-change", "points-debit", "points-credit"}


@dataclass
class Line:
    phone: str
    balance_fen: int
    points: int
    package: str
    total_mb: int
    used_mb: int
    plan: str = "5G-128"


@dataclass
class BossState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    clients: dict[str, str] = field(default_factory=dict)  # app id -> secret
    lines: dict[str, Line] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # phone -> {code, expires, attempts}
    sent: list[dict[str, Any]] = field(default_factory=list)
    # "<client app id>:<idempotency key>" -> {body_hash, result}: each client has its own keys
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    nonces: dict[str, float] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


def state() -> BossState:
    return current_app.extensions.setdefault("sim_boss", BossState())


def line_for(st: BossState, phone: str) -> Line | None:
    """Deterministic per number; numbers ending 0000 are not the operator's subscribers."""
    if phone.endswith("0000"):
        return None
    if phone not in st.lines:
        seed = int(hashlib.sha256(phone.encode()).hexdigest()[:8], 16)
        st.lines[phone] = Line(
            phone=phone,
            balance_fen=1000 + seed % 20000,
            points=seed % 5000,
            package="5G 畅享 30GB",
            total_mb=30720,
            used_mb=seed % 30720,
        )
    return st.lines[phone]


def _answer(status: int, payload: dict[str, Any], secret: str) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    resp = Response(body, status=status, content_type="application/json; charset=utf-8")
    resp.headers["X-Boss-Timestamp"], resp.headers["X-Boss-Nonce"] = timestamp, nonce
    resp.headers["X-Boss-Signature"] = sign(secret, "RESPONSE", request.path, timestamp, nonce, body)
    return resp


def _error(code: str, message: str, status: int, secret: str, retryable: bool = False) -> Response:
    return _answer(
        status, {"ok": False, "error": {"code": code, "message": message, "retryable": retryable}}, secret
    )


@bp.post("/v1/<path:operation>")
def call(operation: str) -> ResponseReturnValue:
    st = state()
    raw = request.get_data()
    app_id = request.headers.get("X-Boss-App", "")
    secret = st.clients.get(app_id, "")
    ts, nonce = request.headers.get("X-Boss-Timestamp", ""), request.headers.get("X-Boss-Nonce", "")
    expected = sign(secret, "POST", request.path, ts, nonce, raw) if secret else ""
    if not secret or not hmac.compare_digest(expected, request.headers.get("X-Boss-Signature", "")):
        return _error("INVALID_SIGNATURE", "bad signature or unknown app", 401, secret or "x")
    try:
        fresh = abs(time.time() - int(ts)) <= 300
    except ValueError:
        fresh = False
    with st.lock:
        if not fresh or nonce in st.nonces:
            return _error("INVALID_SIGNATURE", "stale or replayed request", 401, secret)
        st.nonces[nonce] = time.time()
        st.calls[operation] = st.calls.get(operation, 0) + 1
        fault = next(
            (f for f in st.faults if f["remaining"] > 0 and f.get("operation") in (None, operation)), None
        )
        if fault:
            fault["remaining"] -= 1
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return _error("INVALID_REQUEST", "body is not JSON", 400, secret)
    if fault and fault["kind"] == "latency":
        time.sleep(fault.get("ms", 2000) / 1000)
    if fault and fault["kind"] == "busy":
        return _error("BUSY", "try again", 503, secret, retryable=True)
    key = request.headers.get("Idempotency-Key")
    if operation in WRITES:
        if not key or not 8 <= len(key) <= 128:
            return _error("INVALID_REQUEST", "Idempotency-Key required", 400, secret)
        body_hash = hashlib.sha256(raw).hexdigest()
        # Checked, carried out and recorded under one lock: concurrent copies of a write see one
        # another, and a failure is remembered like a success.
        with st.lock:
            previous = st.done.get(f"{app_id}:{key}")
            if previous:
                if previous["body_hash"] != body_hash:
                    return _error("IDEMPOTENCY_MISMATCH", "key used for another request", 409, secret)
                if previous["status"] == "failed":
                    return _answer(previous["http"], previous["payload"], secret)
                return _answer(200, {"ok": True, "data": {**previous["result"], "replayed": True}}, secret)
            status, payload = _operate(st, operation, body, key, app_id)
            st.done[f"{app_id}:{key}"] = {
                "body_hash": body_hash,
                "status": "ok" if status == 200 else "failed",
                "result": payload.get("data") or {},
                "http": status,
                "payload": payload,
                "error": (payload.get("error") or {}).get("code"),
            }
    else:
        status, payload = _operate(st, operation, body, key, app_id)
    if fault and fault["kind"] == "timeout_after_accept":
        time.sleep(fault.get("ms", 15000) / 1000)  # done, but the answer comes too late
    return _answer(status, payload, secret)


def _operate(
    st: BossState, operation: str, body: dict[str, Any], key: str | None, app_id: str
) -> tuple[int, dict[str, Any]]:
    def ok(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "data": data}

    def fail(code: str, message: str, status: int) -> tuple[int, dict[str, Any]]:
        return status, {"ok": False, "error": {"code": code, "message": message, "retryable": status >= 500}}

    if operation == "requests/query":
        record = st.done.get(f"{app_id}:{body.get('idempotency_key', '')}")
        if record is None:
            return ok({"status": "unknown"})
        if record["status"] == "failed":
            return ok({"status": "failed", "error": record["error"]})
        return ok({"status": "succeeded", "result": record["result"]})
    phone = str(body.get("phone", ""))
    if not PHONE_RE.match(phone):
        return fail("INVALID_REQUEST", "phone must be an 11-digit mobile number", 400)
    with st.lock:
        line = line_for(st, phone)
        if line is None:
            return fail("UNKNOWN_NUMBER", "not a subscriber of this operator", 404)
        now = time.time()
        if operation == "sms/send":
            recent = [s for s in st.sent if s["phone"] == phone and now - s["at"] < 60]
            if recent:
                return fail("RATE_LIMITED", "one code a minute", 429)
            code = f"{secrets.randbelow(10**6):06d}"
            st.codes[phone] = {"code": code, "expires": now + 300, "attempts": 0}
            st.sent.append({"phone": phone, "code": code, "at": now})
            return ok({"expires_in": 300})
        if operation == "sms/verify":
            entry = st.codes.get(phone)
            if entry is None or entry["expires"] < now:
                return fail("CODE_EXPIRED", "request a new code", 400)
            entry["attempts"] += 1
            if entry["attempts"] > 5:
                return fail("TOO_MANY_ATTEMPTS", "request a new code", 429)
            if not hmac.compare_digest(entry["code"], str(body.get("code", ""))):
                return fail("INVALID_CODE", "wrong code", 400)
            st.codes.pop(phone)
            return ok({"verified": True})
        if operation == "balance":
            return ok({"balance_fen": line.balance_fen, "as_of": datetime.now(UTC).isoformat()})
        if operation == "data-usage":
            return ok(
                {
                    "package": line.package,
                    "total_mb": line.total_mb,
                    "used_mb": line.used_mb,
                    "remaining_mb": line.total_mb - line.used_mb,
                    "resets_at": "next month",
                }
            )
        if operation == "bill":
            month = str(body.get("month") or datetime.now(UTC).strftime("%Y-%m"))
            return ok(
                {
                    "month": month,
                    "amount_fen": 5800 + line.used_mb % 3000,
                    "items": [
                        {"name": "套餐月费", "amount_fen": 5800},
                        {"name": "超出流量", "amount_fen": line.used_mb % 3000},
                    ],
                }
            )
        if operation == "points":
            return ok({"points": line.points})
        request_id = "B" + secrets.token_hex(8)
        if operation == "topup":
            amount = int(body.get("amount_fen", 0))
            if amount <= 0:
                return fail("INVALID_REQUEST", "amount_fen must be positive", 400)
            line.balance_fen += amount
            return ok({"request_id": request_id, "balance_fen": line.balance_fen})
        if operation == "data-package":
            line.total_mb += 1024
            return ok({"request_id": request_id, "package": str(body.get("package_code", ""))})
        if operation == "plan-change":
            line.plan = str(body.get("plan_code", ""))
            return ok({"request_id": request_id, "plan": line.plan, "effective_at": "next month"})
        if operation in ("points-debit", "points-credit"):
            points = int(body.get("points", 0))
            if points <= 0:
                return fail("INVALID_REQUEST", "points must be positive", 400)
            if operation == "points-debit":
                if line.points < points:
                    return fail("INSUFFICIENT_POINTS", "not enough points", 409)
                line.points -= points
            else:
                line.points += points
            return ok({"request_id": request_id, "points": line.points})
    return fail("INVALID_REQUEST", f"unknown operation {operation}", 404)


# -- admin -------------------------------------------------------------------------------------


@admin.post("/clients")
def register_client() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    if not data.get("app_id") or not data.get("secret"):
        abort(400, "app_id and secret are required")
    with state().lock:
        state().clients[str(data["app_id"])] = str(data["secret"])
    return jsonify({"ok": True}), 201


@admin.get("/sms/<phone>")
def last_code(phone: str) -> ResponseReturnValue:
    """What the subscriber's phone received (tests read the code here)."""
    sent = [s for s in state().sent if s["phone"] == phone]
    if not sent:
        abort(404, "no SMS sent to that number")
    return jsonify(sent[-1])


@admin.post("/faults")
def add_fault() -> ResponseReturnValue:
    """kind: latency (ms) | busy | timeout_after_accept (ms); operation: one operation or all; count."""
    data = request.get_json(silent=True) or {}
    if data.get("kind") not in ("latency", "busy", "timeout_after_accept"):
        abort(400, "unknown fault kind")
    with state().lock:
        state().faults.append({**data, "remaining": int(data.get("count", 1))})
    return jsonify({"faults": state().faults})


@admin.get("/lines/<phone>")
def read_line(phone: str) -> ResponseReturnValue:
    with state().lock:
        line = line_for(state(), phone)
        if line is None:
            abort(404)
        return jsonify({**line.__dict__, "calls": dict(state().calls)})
