"""The account matrix: org units and accounts (with their secrets), and the callback's view of them.

Services take plain arguments and return model objects or plain values; callers commit.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import current_app

from accounts.models import Account, AccountKind, AccountStatus, MessageMode, OrgKind, OrgUnit
from wechat_service import wxcrypto
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db
from wechat_service.gateway import client_for
from wechat_service.router import AccountInfo
from wechat_service.secrets import mask

APPID_RE = re.compile(r"^wx[0-9a-f]{16}$")
ORIGINAL_ID_RE = re.compile(r"^gh_[0-9a-zA-Z]{6,28}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9]{3,32}$")


# -- scoping -------------------------------------------------------------------------------------


def scoped(model: Any, account_id: int) -> sa.Select[Any]:
    """The one way to query account-owned rows: every such query starts here."""
    return sa.select(model).where(model.account_id == account_id)


def get_scoped(model: Any, account_id: int, row_id: int) -> Any:
    row = db.session.scalars(scoped(model, account_id).where(model.id == row_id)).first()
    if row is None:
        raise NotFoundError(f"{model.__name__} {row_id} not found in this account")
    return row


# -- org units -----------------------------------------------------------------------------------


def add_org_unit(code: str, name: str, kind: str, parent_code: str | None = None) -> OrgUnit:
    try:
        kind_enum = OrgKind(kind)
    except ValueError:
        raise InvalidInputError(
            f"kind must be one of {[k.value for k in OrgKind]}", fields={"kind": ["invalid"]}
        ) from None
    if not code or not re.match(r"^[a-z0-9][a-z0-9_.-]{0,63}$", code):
        raise InvalidInputError(
            "code must be lower-case letters, digits, '.', '_' or '-'", fields={"code": ["invalid"]}
        )
    if db.session.scalar(sa.select(OrgUnit.id).where(OrgUnit.code == code)):
        raise ConflictError(f"org unit {code!r} exists")
    parent = None
    if parent_code:
        parent = db.session.scalar(sa.select(OrgUnit).where(OrgUnit.code == parent_code))
        if parent is None:
            raise NotFoundError(f"parent org unit {parent_code!r} not found")
    unit = OrgUnit(code=code, name=name, kind=kind_enum, parent=parent)
    db.session.add(unit)
    db.session.flush()
    return unit


def list_org_units() -> list[OrgUnit]:
    return list(db.session.scalars(sa.select(OrgUnit).order_by(OrgUnit.code)))


def org_unit_by_code(code: str) -> OrgUnit:
    unit = db.session.scalar(sa.select(OrgUnit).where(OrgUnit.code == code))
    if unit is None:
        raise NotFoundError(f"org unit {code!r} not found")
    return unit


def org_path(unit: OrgUnit | None) -> list[str]:
    path: list[str] = []
    while unit is not None and len(path) < 16:
        path.append(unit.code)
        unit = unit.parent
    return list(reversed(path))


# -- accounts ------------------------------------------------------------------------------------


def _validate_account_fields(fields: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out = dict(fields)
    if "appid" in out and not APPID_RE.match(out["appid"] or ""):
        errors["appid"] = ["must look like wx followed by 16 hex digits"]
    if out.get("original_id") and not ORIGINAL_ID_RE.match(out["original_id"]):
        errors["original_id"] = ["must look like gh_ followed by letters and digits"]
    if out.get("token") is not None and not TOKEN_RE.match(out["token"]):
        errors["token"] = ["must be 3-32 letters or digits (WeChat's rule)"]
    if out.get("aes_key") is not None:
        try:
            wxcrypto.check_aes_key(out["aes_key"])
        except ValueError as exc:
            errors["aes_key"] = [str(exc)]
    for key, enum_cls in (("kind", AccountKind), ("message_mode", MessageMode)):
        if key in out and out[key] is not None:
            try:
                out[key] = enum_cls(out[key])
            except ValueError:
                errors[key] = [f"must be one of {[m.value for m in enum_cls]}"]
    if out.get("timezone"):
        try:
            ZoneInfo(out["timezone"])
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory: OSError
            errors["timezone"] = ["unknown IANA timezone"]
    if "name" in out and not (out["name"] or "").strip():
        errors["name"] = ["required"]
    elif len(out.get("name") or "") > 128:
        errors["name"] = ["at most 128 characters"]
    if "app_secret" in out and not out["app_secret"]:
        errors["app_secret"] = ["required"]
    if errors:
        raise InvalidInputError("invalid account fields", fields=errors)
    return out


def _check_complete(*, kind: AccountKind, token: str | None, mode: MessageMode, aes_key: str | None) -> None:
    """What an account needs to receive callbacks, checked on the final state of add and update."""
    if kind is not AccountKind.mini_program and not token:
        raise InvalidInputError("an official account needs a callback token", fields={"token": ["required"]})
    if mode is not MessageMode.plain and not aes_key:
        raise InvalidInputError(
            "compatible and safe modes need an EncodingAESKey", fields={"aes_key": ["required"]}
        )


def add_account(
    *,
    name: str,
    appid: str,
    app_secret: str,
    kind: str = "service",
    original_id: str | None = None,
    token: str | None = None,
    aes_key: str | None = None,
    message_mode: str = "plain",
    timezone: str = "Asia/Shanghai",
    org_unit_code: str | None = None,
) -> Account:
    fields = _validate_account_fields(
        {
            "name": name,
            "appid": appid,
            "app_secret": app_secret,
            "kind": kind,
            "original_id": original_id,
            "token": token,
            "aes_key": aes_key,
            "message_mode": message_mode,
            "timezone": timezone,
        }
    )
    _check_complete(
        kind=fields["kind"], token=fields["token"], mode=fields["message_mode"], aes_key=fields["aes_key"]
    )
    if db.session.scalar(sa.select(Account.id).where(Account.appid == appid)):
        raise ConflictError(f"an account with appid {appid} exists")
    unit = org_unit_by_code(org_unit_code) if org_unit_code else None
    account = Account(**fields, org_unit=unit, status=AccountStatus.active)
    db.session.add(account)
    db.session.flush()
    return account


UPDATABLE = {"name", "kind", "original_id", "app_secret", "token", "aes_key", "message_mode", "timezone"}


def update_account(appid: str, *, org_unit_code: str | None = None, **changes: Any) -> Account:
    account = account_by_appid(appid)
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise InvalidInputError(f"cannot update {sorted(unknown)}")
    changes = _validate_account_fields({k: v for k, v in changes.items() if v is not None})
    _check_complete(
        kind=changes.get("kind", account.kind),
        token=changes.get("token", account.token),
        mode=changes.get("message_mode", account.message_mode),
        aes_key=changes.get("aes_key", account.aes_key),
    )
    if "aes_key" in changes and changes["aes_key"] != account.aes_key:
        account.previous_aes_key = account.aes_key
        account.aes_key_rotated_at = utcnow()
    for key, value in changes.items():
        setattr(account, key, value)
    if org_unit_code is not None:
        account.org_unit = org_unit_by_code(org_unit_code) if org_unit_code else None
    bump_config(account)
    db.session.flush()
    return account


def set_account_status(appid: str, status: AccountStatus) -> Account:
    account = account_by_appid(appid)
    account.status = status
    bump_config(account)
    db.session.flush()
    return account


def rotate_aes_key(appid: str, new_key: str | None = None) -> Account:
    """Make ``new_key`` (or a fresh one) current; the old key keeps decrypting until the next rotation."""
    account = account_by_appid(appid)
    new_key = new_key or wxcrypto.generate_aes_key()
    _validate_account_fields({"aes_key": new_key})
    if account.aes_key == new_key:
        raise ConflictError("that is already the current EncodingAESKey")
    account.previous_aes_key = account.aes_key
    account.aes_key = new_key
    account.aes_key_rotated_at = utcnow()
    bump_config(account)
    db.session.flush()
    return account


def bump_config(account: Account | int) -> None:
    """Invalidate every process's cached view of the account (keys, rules, menu) at once."""
    account_id = account if isinstance(account, int) else account.id
    db.session.execute(
        sa.update(Account)
        .where(Account.id == account_id)
        .values(config_version=Account.config_version + 1)
        .execution_options(synchronize_session=False)
    )
    if not isinstance(account, int):
        db.session.expire(account, ["config_version"])


def account_by_appid(appid: str) -> Account:
    account = db.session.scalar(sa.select(Account).where(Account.appid == appid))
    if account is None:
        raise NotFoundError(f"no account with appid {appid}")
    return account


def list_accounts(org_unit_code: str | None = None) -> list[Account]:
    query = sa.select(Account).order_by(Account.id)
    if org_unit_code:
        ids = subtree_ids(org_unit_by_code(org_unit_code).id)
        query = query.where(Account.org_unit_id.in_(ids))
    return list(db.session.scalars(query))


def subtree_ids(root_id: int) -> list[int]:
    units = db.session.execute(sa.select(OrgUnit.id, OrgUnit.parent_id)).all()
    children: dict[int | None, list[int]] = {}
    for uid, parent in units:
        children.setdefault(parent, []).append(uid)
    out, stack = [], [root_id]
    while stack:
        uid = stack.pop()
        out.append(uid)
        stack.extend(children.get(uid, []))
    return out


def callback_url(account: Account) -> str:
    return f"{current_app.config['PUBLIC_BASE_URL']}/wechat/{account.appid}/callback"


SECRET_SET = "set"  # noqa: S105 - a label, not a password


def describe_account(
    account: Account, token_health: dict[str, Any] | None = None, *, secret_tails: bool = True
) -> dict[str, Any]:
    """The account as the CLI and APIs show it: secrets masked, never in clear. With
    ``secret_tails`` off (roles that may not manage the account's settings) not even their last
    characters: only whether each is set ("set", or "" when not)."""

    def shown(value: str | None) -> str:
        if secret_tails:
            return mask(value)
        return SECRET_SET if value else ""

    out = {
        "id": account.id,
        "name": account.name,
        "kind": account.kind.value,
        "appid": account.appid,
        "original_id": account.original_id,
        "message_mode": account.message_mode.value,
        "status": account.status.value,
        "timezone": account.timezone,
        "org_unit": account.org_unit.code if account.org_unit else None,
        "org_path": org_path(account.org_unit),
        "app_secret": shown(account.app_secret),
        "token": shown(account.token),
        "aes_key": shown(account.aes_key),
        "previous_aes_key": shown(account.previous_aes_key),
        "aes_key_rotated_at": account.aes_key_rotated_at.isoformat() if account.aes_key_rotated_at else None,
        "callback_url": callback_url(account),
        "created_at": account.created_at.isoformat() if account.created_at else None,
    }
    if token_health is not None:
        out["token_health"] = token_health
    return out


# -- the callback's cached view ------------------------------------------------------------------

_info_cache: dict[str, AccountInfo] = {}
_accounts = Account.__table__
# Core, built once: this runs on every callback.
_VERSION_QUERY = sa.select(_accounts.c.id, _accounts.c.config_version, _accounts.c.status).where(
    _accounts.c.appid == sa.bindparam("appid")
)
_info_lock = threading.Lock()


def callback_account(appid: str) -> AccountInfo | None:
    """One indexed SELECT of small columns; decrypted secrets come from a per-process cache
    keyed by ``config_version``, so a key rotation or a disable is seen by the next request."""
    row = db.session.connection().execute(_VERSION_QUERY, {"appid": appid}).first()
    if row is None:
        return None
    cached = _info_cache.get(appid)
    if cached and cached.id == row.id and cached.config_version == row.config_version:
        return cached
    account = db.session.get(Account, row.id)
    if account is None:
        return None
    keys = tuple(k for k in (account.aes_key, account.previous_aes_key) if k)
    info = AccountInfo(
        id=account.id,
        appid=account.appid,
        original_id=account.original_id,
        kind=account.kind.value,
        message_mode=account.message_mode.value,
        status=account.status.value,
        timezone=account.timezone,
        config_version=account.config_version,
        token=account.token,
        aes_keys=keys,
    )
    with _info_lock:
        _info_cache[appid] = info
    return info


def callback_account_by_id(account_id: int) -> AccountInfo | None:
    appid = db.session.scalar(sa.select(Account.appid).where(Account.id == account_id))
    return callback_account(appid) if appid else None


def active_token_accounts() -> list[tuple[str, str]]:
    """(appid, secret) of every active account, for the token keeper."""
    rows = db.session.scalars(sa.select(Account).where(Account.status == AccountStatus.active)).all()
    return [(a.appid, a.app_secret) for a in rows]


def api_client(account_id: int) -> Any:
    """The WeChat API gateway client for an account."""

    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFoundError(f"account {account_id} not found")
    return client_for(account.appid, account.app_secret)
