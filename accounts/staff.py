"""Operator staff: users, passwords (scrypt), TOTP, login throttling, grants, and the audit trail."""

from __future__ import annotations

import hmac
import re
import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyotp
import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from accounts.errors import AccountErrorCode
from accounts.models import Account, AuditLog, Grant, OrgUnit, Role, StaffUser
from wechat_service import i18n
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, ErrorCode, InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db, get_redis

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{2,63}$")
MIN_PASSWORD = 10
# Throttling windows: a user locks after 5 failures in 15 min; an IP after 30.
USER_FAILURES, IP_FAILURES, WINDOW = 5, 30, 15 * 60
# Secrets never land in the audit trail, even as before/after values.
REDACTED_FIELDS = {
    "app_secret",
    "token",
    "aes_key",
    "previous_aes_key",
    "password",
    "totp_secret",
    "session_key",
}


class ThrottledError(ServiceError):
    code = ErrorCode.too_many_attempts
    status = 429


class LoginError(ServiceError):
    code = AccountErrorCode.invalid_login
    status = 401


def hash_password(password: str) -> str:
    # Werkzeug's scrypt (n=2^15, r=8, p=1): a memory-hard KDF from the stdlib's hashlib.
    return generate_password_hash(password, method="scrypt")


def _check_password_strength(username: str, password: str) -> None:
    if len(password) < MIN_PASSWORD or password.lower() == username.lower() or len(set(password)) < 4:
        raise InvalidInputError(
            f"a password needs at least {MIN_PASSWORD} characters, not the username",
            fields={"password": ["too weak"]},
        )


def create_user(username: str, password: str, *, display_name: str = "", is_admin: bool = False) -> StaffUser:
    username = (username or "").strip().lower()
    if not USERNAME_RE.match(username):
        raise InvalidInputError(
            "username: 3-64 lower-case letters, digits, . _ @ -", fields={"username": ["invalid"]}
        )
    _check_password_strength(username, password)
    if len(display_name or "") > 128:
        raise InvalidInputError("display name: at most 128 characters", fields={"display_name": ["too long"]})
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == username)):
        raise ConflictError(f"user {username!r} exists", fields={"username": ["taken"]})
    user = StaffUser(
        username=username,
        display_name=display_name or username,
        password_hash=hash_password(password),
        is_admin=is_admin,
        is_active=True,
        password_changed_at=utcnow(),
    )
    db.session.add(user)
    db.session.flush()
    return user


def user_by_id(user_id: int) -> StaffUser:
    user = db.session.get(StaffUser, user_id)
    if user is None:
        raise NotFoundError("no such user")
    return user


def list_users() -> list[StaffUser]:
    return list(db.session.scalars(sa.select(StaffUser).order_by(StaffUser.username)))


def _throttle_keys(username: str, ip: str) -> tuple[str, str]:
    return f"login:fail:user:{username}", f"login:fail:ip:{ip}"


def authenticate(username: str, password: str, ip: str, totp_code: str | None = None) -> StaffUser:
    """Check a login; attempts count per user and per IP in Redis, shared by every web process.

    The attempt is counted *before* the password is checked (one atomic MULTI of INCRs), so
    parallel guesses cannot all pass a read-then-check gate: at most ``USER_FAILURES`` of them
    ever reach the password. A correct password gives its count back."""
    username = (username or "").strip().lower()
    conn = get_redis()
    user_key, ip_key = _throttle_keys(username, ip)
    pipe = conn.pipeline()  # MULTI/EXEC: both counters move together
    for key in (user_key, ip_key):
        pipe.set(key, 0, ex=WINDOW, nx=True)  # the window starts at the first failure
        pipe.incr(key)
    _, user_count, _, ip_count = pipe.execute()
    if user_count > USER_FAILURES or ip_count > IP_FAILURES:
        raise ThrottledError("too many failed logins; try again in 15 minutes")
    user = db.session.scalar(sa.select(StaffUser).where(StaffUser.username == username))
    # The same scrypt work whether the user exists or not: timing tells nothing.
    ok = check_password_hash(user.password_hash if user else _dummy_hash(), password or "")
    ok = bool(ok and user and user.is_active)
    if ok and user is not None and user.totp_secret:
        if not totp_code:
            # The password was right: not a failure, the code is still to come.
            _forgive(conn, user_key, ip_key)
            raise LoginError(
                "enter the code from your authenticator app", code=AccountErrorCode.totp_required
            )
        ok = accept_totp(user, totp_code)
    if not ok or user is None:  # (ok implies a user)
        raise LoginError("wrong username, password or code")
    conn.delete(user_key)
    _forgive(conn, None, ip_key)
    user.last_login_at = utcnow()
    return user


def _forgive(conn: Any, user_key: str | None, ip_key: str) -> None:
    pipe = conn.pipeline()
    if user_key:
        pipe.decr(user_key)
    pipe.decr(ip_key)
    pipe.execute()


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password("no such user, no such password"))
    return _DUMMY[0]


def change_password(user: StaffUser, current: str, new: str) -> None:
    if not check_password_hash(user.password_hash, current or ""):
        raise InvalidInputError("the current password is wrong", fields={"current_password": ["wrong"]})
    _check_password_strength(user.username, new)
    user.password_hash = hash_password(new)
    user.password_changed_at = utcnow()
    end_sessions(user)


def end_sessions(user: StaffUser) -> None:
    """Every session signed in before now stops working at its next request (logout, password
    change, an administrator's "sign out everywhere"). Atomic in SQL: two at once both count."""
    user.session_generation = StaffUser.session_generation + 1
    db.session.flush()
    db.session.refresh(user, ["session_generation"])


def start_totp() -> tuple[str, str]:
    secret = pyotp.random_base32()
    return secret, pyotp.TOTP(secret).provisioning_uri(name="wechat-service", issuer_name="wechat-service")


def _matching_step(secret: str, code: str) -> int | None:
    """The time step (unix time // 30) whose code this is: now, or one step either side."""
    totp = pyotp.TOTP(secret)
    code = (code or "").strip()
    now = int(time.time()) // totp.interval
    for step in (now, now - 1, now + 1):
        if hmac.compare_digest(totp.at(step * totp.interval), code):
            return step
    return None


def accept_totp(user: StaffUser, code: str) -> bool:
    """True once per code: the step is recorded with a conditional UPDATE, so a replay (or two
    requests racing with one code) finds it taken, as does any older step."""
    if not user.totp_secret:
        return False
    step = _matching_step(user.totp_secret, code)
    if step is None:
        return False
    taken = db.session.execute(
        sa.update(StaffUser)
        .where(
            StaffUser.id == user.id,
            sa.or_(StaffUser.totp_last_step.is_(None), StaffUser.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    return taken.rowcount == 1  # type: ignore[attr-defined]


def _check_password(user: StaffUser, password: str) -> None:
    if not check_password_hash(user.password_hash, password or ""):
        raise InvalidInputError("the password is wrong", fields={"password": ["wrong"]})


def enable_totp(
    user: StaffUser, secret: str, code: str, *, password: str = "", current_code: str = ""
) -> None:
    """Turn TOTP on, or replace the authenticator: always the password, and while one is set, a
    code from it too — a borrowed session alone cannot swap the second factor."""
    _check_password(user, password)
    if user.totp_secret and not accept_totp(user, current_code):
        raise InvalidInputError(
            "enter a current code from the authenticator you use now", fields={"current_code": ["wrong"]}
        )
    try:
        totp = pyotp.TOTP(secret)
        totp.now()
    except (ValueError, TypeError):  # not base32, or too short (pyotp wants >= 112 bits)
        raise InvalidInputError("start the set-up again", fields={"secret": ["invalid"]}) from None
    step = _matching_step(secret, code)
    if step is None:
        raise InvalidInputError(
            "that code does not match; check the clock of your phone", fields={"code": ["wrong"]}
        )
    user.totp_secret = secret
    user.totp_last_step = step  # the code just typed cannot sign in afterwards


def disable_totp(user: StaffUser, password: str, code: str) -> None:
    _check_password(user, password)
    if not user.totp_secret:
        raise InvalidInputError("two-factor sign-in is not on", fields={"code": ["not set"]})
    if not accept_totp(user, code):
        raise InvalidInputError("enter a current code from your authenticator", fields={"code": ["wrong"]})
    user.totp_secret = None
    user.totp_last_step = None


def set_active(user: StaffUser, active: bool) -> None:
    user.is_active = active


# -- grants ----------------------------------------------------------------------------------------


def add_grant(
    user: StaffUser,
    role: str,
    *,
    account_id: int | None = None,
    org_unit_code: str | None = None,
    can_approve: bool = False,
) -> Grant:
    try:
        role_enum = Role(role)
    except ValueError:
        raise InvalidInputError(
            f"role must be one of {[r.value for r in Role]}", fields={"role": ["invalid"]}
        ) from None
    if (account_id is None) == (not org_unit_code):
        raise InvalidInputError("grant either an account or an org unit", fields={"scope": ["one required"]})
    org_unit_id = None
    if account_id is not None and db.session.get(Account, account_id) is None:
        raise NotFoundError("no such account")
    if org_unit_code:
        org_unit_id = db.session.scalar(sa.select(OrgUnit.id).where(OrgUnit.code == org_unit_code))
        if org_unit_id is None:
            raise NotFoundError(f"no org unit {org_unit_code!r}")
    grant = Grant(
        user_id=user.id,
        role=role_enum,
        account_id=account_id,
        org_unit_id=org_unit_id,
        can_approve=can_approve,
    )
    db.session.add(grant)
    db.session.flush()
    return grant


def remove_grant(user: StaffUser, grant_id: int) -> Grant:
    grant = db.session.scalar(sa.select(Grant).where(Grant.id == grant_id, Grant.user_id == user.id))
    if grant is None:
        raise NotFoundError("no such grant")
    db.session.delete(grant)
    db.session.flush()
    return grant


def grants_of(user_id: int) -> list[Grant]:
    return list(db.session.scalars(sa.select(Grant).where(Grant.user_id == user_id).order_by(Grant.id)))


def describe_grant(grant: Grant) -> dict[str, Any]:
    scope = None
    if grant.account_id:
        scope = {
            "account_id": grant.account_id,
            "account": db.session.scalar(sa.select(Account.name).where(Account.id == grant.account_id)),
        }
    else:
        scope = {
            "org_unit": db.session.scalar(sa.select(OrgUnit.code).where(OrgUnit.id == grant.org_unit_id))
        }
    return {"id": grant.id, "role": grant.role.value, "can_approve": grant.can_approve, **scope}


# -- audit -----------------------------------------------------------------------------------------


def redact(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: ("[redacted]" if k in REDACTED_FIELDS and v else v) for k, v in values.items()}


def audit(
    actor_id: int | None,
    action: str,
    *,
    account_id: int | None = None,
    target: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditLog:
    """Record in the caller's transaction: the entry commits (or rolls back) with the change."""
    entry = AuditLog(
        user_id=actor_id,
        account_id=account_id,
        action=action,
        target=target[:256],
        before=redact(before),
        after=redact(after),
        ip=ip,
        at=utcnow(),
    )
    db.session.add(entry)
    return entry


def audit_query(
    *,
    account_ids: list[int] | None,
    user_id: int | None = None,
    account_id: int | None = None,
    action: str | None = None,
    target: str | None = None,
) -> sa.Select[Any]:
    query = sa.select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc())
    if account_ids is not None:
        query = query.where(AuditLog.account_id.in_(account_ids))
    if user_id:
        query = query.where(AuditLog.user_id == user_id)
    if account_id:
        query = query.where(AuditLog.account_id == account_id)
    if action:
        query = query.where(AuditLog.action == action)
    if target:
        query = query.where(AuditLog.target == target)
    return query


# Where operators' staff work; any IANA zone is accepted, these are offered first.
TIMEZONES = ("Asia/Shanghai", "Asia/Urumqi", "Asia/Hong_Kong", "Asia/Macau", "Asia/Taipei", "UTC")


def set_language(user: StaffUser, locale: str, timezone: str) -> None:
    """The staff member's language (zh_CN or en; empty: as their browser asks) and timezone
    (an IANA name; empty: Asia/Shanghai)."""
    problems: dict[str, list[str]] = {}
    if locale and locale not in i18n.LOCALES:
        problems["locale"] = ["unknown language"]
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems["timezone"] = ["unknown timezone"]
    if problems:
        raise InvalidInputError("unknown language or timezone", fields=problems)
    user.locale, user.timezone = locale or None, timezone or None
