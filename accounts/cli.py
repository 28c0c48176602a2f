"""`wechat-service account …` and `wechat-service orgunit …`: usable by scripts (`--json`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from flask.cli import AppGroup

from accounts import services, staff, sync
from accounts.jobs import sync_followers as job
from accounts.models import AccountStatus, StaffUser
from wechat_service.errors import ServiceError
from wechat_service.extensions import db, enqueue_after_commit
from wechat_service.gateway import token_health
from wechat_service.wxcrypto import generate_aes_key as gen

account_cli = AppGroup("account", help="Manage the account matrix.")
orgunit_cli = AppGroup("orgunit", help="Manage the org tree (group → province → city).")


def _emit(data: Any, as_json: bool, lines: list[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        for line in lines or []:
            click.echo(line)


def _fail(exc: ServiceError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    for field, problems in exc.fields.items():
        click.echo(f"  {field}: {', '.join(map(str, problems))}", err=True)
    db.session.rollback()
    sys.exit(1 if exc.status != 404 else 2)


@account_cli.command("add")
@click.option("--name", required=True)
@click.option("--appid", required=True)
@click.option("--secret", "app_secret", required=True, help="AppSecret (stored encrypted).")
@click.option("--kind", type=click.Choice(["service", "subscription", "mini_program"]), default="service")
@click.option("--original-id", help="The gh_… original id.")
@click.option("--token", help="Callback token (3-32 letters/digits).")
@click.option("--aes-key", help="EncodingAESKey (43 chars); --generate-aes-key makes one.")
@click.option("--generate-aes-key", is_flag=True)
@click.option("--mode", "message_mode", type=click.Choice(["plain", "compatible", "safe"]), default="plain")
@click.option("--timezone", default="Asia/Shanghai")
@click.option("--org-unit", "org_unit_code")
@click.option("--json", "as_json", is_flag=True)
def add_account(as_json: bool, generate_aes_key: bool, **fields: Any) -> None:
    """Add an account and print the callback URL to paste into the WeChat admin."""

    if generate_aes_key and not fields.get("aes_key"):
        fields["aes_key"] = gen()
    try:
        account = services.add_account(**fields)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    data = services.describe_account(account)
    _emit(
        data,
        as_json,
        [
            f"added {account.name} ({account.appid}), mode {account.message_mode.value}",
            f"callback URL (paste into the WeChat admin): {data['callback_url']}",
            "token and EncodingAESKey: as given (stored encrypted; never shown again)",
        ],
    )


@account_cli.command("list")
@click.option("--org-unit", "org_unit_code", help="Only accounts under this org unit.")
@click.option("--json", "as_json", is_flag=True)
def list_accounts(org_unit_code: str | None, as_json: bool) -> None:
    try:
        accounts = services.list_accounts(org_unit_code)
    except ServiceError as exc:
        _fail(exc)
        return
    data = [services.describe_account(a) for a in accounts]
    _emit(
        data,
        as_json,
        [
            f"{a['appid']}  {a['status']:<8} {a['message_mode']:<10} {a['kind']:<12} "
            f"{'/'.join(a['org_path']) or '-':<24} {a['name']}"
            for a in data
        ],
    )


@account_cli.command("show")
@click.argument("appid")
@click.option("--json", "as_json", is_flag=True)
def show_account(appid: str, as_json: bool) -> None:
    try:
        account = services.account_by_appid(appid)
    except ServiceError as exc:
        _fail(exc)
        return
    data = services.describe_account(account, token_health(appid))
    _emit(data, as_json, [f"{k}: {v}" for k, v in data.items()])


@account_cli.command("update")
@click.argument("appid")
@click.option("--name")
@click.option("--kind", type=click.Choice(["service", "subscription", "mini_program"]))
@click.option("--original-id")
@click.option("--secret", "app_secret")
@click.option("--token")
@click.option("--aes-key")
@click.option("--mode", "message_mode", type=click.Choice(["plain", "compatible", "safe"]))
@click.option("--timezone")
@click.option("--org-unit", "org_unit_code", help="Org unit code ('' to detach).")
@click.option("--json", "as_json", is_flag=True)
def update_account(appid: str, as_json: bool, org_unit_code: str | None, **changes: Any) -> None:
    try:
        account = services.update_account(appid, org_unit_code=org_unit_code, **changes)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(services.describe_account(account), as_json, [f"updated {appid}"])


@account_cli.command("disable")
@click.argument("appid")
@click.option("--json", "as_json", is_flag=True)
def disable_account(appid: str, as_json: bool) -> None:
    """Stop serving an account: its callbacks get 403 from now on."""
    try:
        account = services.set_account_status(appid, AccountStatus.disabled)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(services.describe_account(account), as_json, [f"disabled {appid}"])


@account_cli.command("enable")
@click.argument("appid")
@click.option("--json", "as_json", is_flag=True)
def enable_account(appid: str, as_json: bool) -> None:
    try:
        account = services.set_account_status(appid, AccountStatus.active)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(services.describe_account(account), as_json, [f"enabled {appid}"])


@account_cli.command("rotate-aes-key")
@click.argument("appid")
@click.option("--new-key", help="The new EncodingAESKey; omitted, one is generated.")
@click.option("--show-key", is_flag=True, help="Print the new key (to paste into the WeChat admin).")
@click.option("--json", "as_json", is_flag=True)
def rotate_aes_key(appid: str, new_key: str | None, show_key: bool, as_json: bool) -> None:
    """New key first, old key kept for decryption until the next rotation."""
    try:
        account = services.rotate_aes_key(appid, new_key)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    data = services.describe_account(account)
    if show_key:
        data["new_aes_key"] = account.aes_key
    _emit(
        data,
        as_json,
        [f"rotated the EncodingAESKey of {appid}; the previous key still decrypts"]
        + ([f"new EncodingAESKey: {account.aes_key}"] if show_key else []),
    )


@account_cli.command("sync-followers")
@click.argument("appid")
@click.option("--wait", is_flag=True, help="Run here instead of queueing a job.")
@click.option("--json", "as_json", is_flag=True)
def sync_followers(appid: str, wait: bool, as_json: bool) -> None:
    """Backfill existing followers (user/get + user/info/batchget); resumable."""

    try:
        account = services.account_by_appid(appid)
        run = sync.start_sync(account.id)
        if wait:
            db.session.commit()
            result = job(run.id)
        else:
            enqueue_after_commit("low", job, run.id, job_timeout=3600)
            db.session.commit()
            result = {"status": "queued", "sync_id": run.id}
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(result, as_json, [f"{k}: {v}" for k, v in result.items()])


@orgunit_cli.command("add")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--kind", type=click.Choice(["group", "province", "city", "other"]), required=True)
@click.option("--parent", "parent_code")
@click.option("--json", "as_json", is_flag=True)
def add_org_unit(code: str, name: str, kind: str, parent_code: str | None, as_json: bool) -> None:
    try:
        unit = services.add_org_unit(code, name, kind, parent_code)
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(
        {
            "id": unit.id,
            "code": unit.code,
            "name": unit.name,
            "kind": unit.kind.value,
            "path": services.org_path(unit),
        },
        as_json,
        [f"added {'/'.join(services.org_path(unit))}"],
    )


@orgunit_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_org_units(as_json: bool) -> None:
    units = services.list_org_units()
    data: list[dict[str, Any]] = [
        {
            "id": u.id,
            "code": u.code,
            "name": u.name,
            "kind": u.kind.value,
            "parent": u.parent.code if u.parent else None,
            "path": services.org_path(u),
        }
        for u in units
    ]
    _emit(data, as_json, [f"{'/'.join(d['path']):<40} {d['kind']:<9} {d['name']}" for d in data])


user_cli = AppGroup("user", help="Console staff users.")


def _password(password: str | None) -> str:
    import os

    return (
        password
        or os.environ.get("WECHAT_SERVICE_NEW_USER_PASSWORD")
        or click.prompt("Password", hide_input=True, confirmation_prompt=True)
    )


def _create(username: str, password: str | None, display_name: str, admin: bool, as_json: bool) -> None:
    try:
        user = staff.create_user(username, _password(password), display_name=display_name, is_admin=admin)
        staff.audit(None, "staff.create", target=user.username, after={"is_admin": admin, "via": "cli"})
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(
        {"id": user.id, "username": user.username, "is_admin": admin},
        as_json,
        [f"{'administrator' if admin else 'user'} {user.username} created"],
    )


@user_cli.command("create-admin")
@click.option("--username", required=True)
@click.option("--password", help="Prompted for when omitted (or WECHAT_SERVICE_NEW_USER_PASSWORD).")
@click.option("--display-name", default="")
@click.option("--json", "as_json", is_flag=True)
def create_admin(username: str, password: str | None, display_name: str, as_json: bool) -> None:
    """The first administrator (or another one)."""
    _create(username, password, display_name, True, as_json)


@user_cli.command("create")
@click.option("--username", required=True)
@click.option("--password", help="Prompted for when omitted (or WECHAT_SERVICE_NEW_USER_PASSWORD).")
@click.option("--display-name", default="")
@click.option("--json", "as_json", is_flag=True)
def create_user(username: str, password: str | None, display_name: str, as_json: bool) -> None:
    """A staff user without grants (add them with `user grant` or in the console)."""
    _create(username, password, display_name, False, as_json)


@user_cli.command("grant")
@click.argument("username")
@click.option(
    "--role", type=click.Choice(["account_manager", "marketer", "analyst", "support"]), required=True
)
@click.option("--account", "appid", help="AppID of the account.")
@click.option("--org-unit", "org_unit_code", help="Org unit code (every account under it).")
@click.option("--can-approve", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def grant(
    username: str, role: str, appid: str | None, org_unit_code: str | None, can_approve: bool, as_json: bool
) -> None:
    import sqlalchemy as sa

    try:
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.username == username.lower()))
        if user is None:
            raise ServiceError(f"no user {username!r}", status=404)
        account_id = services.account_by_appid(appid).id if appid else None
        new = staff.add_grant(
            user, role, account_id=account_id, org_unit_code=org_unit_code, can_approve=can_approve
        )
        staff.audit(
            None,
            "grant.add",
            account_id=new.account_id,
            target=user.username,
            after={**staff.describe_grant(new), "via": "cli"},
        )
        db.session.commit()
    except ServiceError as exc:
        _fail(exc)
        return
    _emit(staff.describe_grant(new), as_json, [f"granted {role} to {user.username}"])


@user_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_users(as_json: bool) -> None:
    users = staff.list_users()
    data: list[dict[str, Any]] = [
        {
            "id": u.id,
            "username": u.username,
            "is_admin": u.is_admin,
            "is_active": u.is_active,
            "grants": [staff.describe_grant(g) for g in staff.grants_of(u.id)],
        }
        for u in users
    ]
    _emit(
        data,
        as_json,
        [f"{d['username']:<24} {'admin' if d['is_admin'] else ''} {len(d['grants'])} grants" for d in data],
    )
