"""Console operations: authorise on the account, change, audit — in one transaction.

The console pages and the JSON API both call these, so a rule (who may, what is recorded) is
written once. Callers commit.
"""

from __future__ import annotations

import time
from typing import Any

from accounts import access as acl
from accounts import menus, qrcodes, replies, services, staff
from accounts.access import Access
from accounts.models import Account, AccountStatus, ReplyRule, StaffUser, Subscriber
from wechat_service.callbacks import dry_run
from wechat_service.errors import NotFoundError

SETTING_FIELDS = ("name", "kind", "original_id", "message_mode", "timezone")
SECRET_FIELDS = ("app_secret", "token", "aes_key")


def _settings(account: Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "kind": account.kind.value,
        "original_id": account.original_id,
        "message_mode": account.message_mode.value,
        "timezone": account.timezone,
        "status": account.status.value,
        "org_unit": account.org_unit.code if account.org_unit else None,
    }


def create_account(access: Access, fields: dict[str, Any], org_unit_code: str | None, ip: str) -> Account:
    if not access.is_admin:
        raise acl.ForbiddenError("only administrators add accounts")
    account = services.add_account(**fields, org_unit_code=org_unit_code or None)
    after = _settings(account) | {"appid": account.appid} | {k: "set" for k in SECRET_FIELDS if fields.get(k)}
    staff.audit(
        access.user_id, "account.create", account_id=account.id, target=account.appid, after=after, ip=ip
    )
    return account


def update_account(
    access: Access, account_id: int, changes: dict[str, Any], org_unit_code: str | None, ip: str
) -> Account:
    account = acl.account_for(access, account_id, acl.EDIT)
    if org_unit_code is not None and not access.is_admin:
        # Moving an account hands it to everyone granted on the new unit: administrators only.
        raise acl.ForbiddenError("only administrators move accounts between org units")
    before = _settings(account)
    services.update_account(account.appid, org_unit_code=org_unit_code, **changes)
    after = _settings(account) | {k: "changed" for k in SECRET_FIELDS if changes.get(k)}
    staff.audit(
        access.user_id,
        "account.update",
        account_id=account.id,
        target=account.appid,
        before=before,
        after=after,
        ip=ip,
    )
    return account


def rotate_aes_key(access: Access, account_id: int, ip: str) -> Account:
    account = acl.account_for(access, account_id, acl.EDIT)
    services.rotate_aes_key(account.appid)
    staff.audit(
        access.user_id,
        "account.rotate_aes_key",
        account_id=account.id,
        target=account.appid,
        after={"aes_key": "rotated"},
        ip=ip,
    )
    return account


def set_status(access: Access, account_id: int, active: bool, ip: str) -> Account:
    account = acl.account_for(access, account_id, acl.EDIT)
    before = account.status.value
    services.set_account_status(account.appid, AccountStatus.active if active else AccountStatus.disabled)
    staff.audit(
        access.user_id,
        "account.enable" if active else "account.disable",
        account_id=account.id,
        target=account.appid,
        before={"status": before},
        after={"status": account.status.value},
        ip=ip,
    )
    return account


def reveal_subscriber(
    access: Access, account_id: int, subscriber_id: int, reason: str, ip: str
) -> Subscriber:
    account = acl.account_for(access, account_id, acl.REVEAL)
    if len(reason.strip()) < 3:
        raise acl.InvalidInputError(
            "give the reason for the reveal (it goes in the audit log)", fields={"reason": ["required"]}
        )
    sub = services.get_scoped(Subscriber, account.id, subscriber_id)
    staff.audit(
        access.user_id,
        "subscriber.reveal",
        account_id=account.id,
        target=f"subscriber {sub.id}",
        after={"reason": reason[:200]},
        ip=ip,
    )
    return sub


def add_rule(access: Access, account_id: int, fields: dict[str, Any], ip: str) -> ReplyRule:
    account = acl.account_for(access, account_id, acl.REPLIES)
    rule = replies.add_rule(account.id, **fields)
    staff.audit(
        access.user_id,
        "reply.create",
        account_id=account.id,
        target=f"rule {rule.name}",
        after={
            "kind": rule.kind.value,
            "keywords": rule.keywords,
            "match_mode": rule.match_mode.value,
            "reply": rule.reply,
        },
        ip=ip,
    )
    return rule


TESTER_OPENID = "console-tester"


def try_message(access: Access, account_id: int, text: str) -> dict[str, Any]:
    """What a subscriber typing ``text`` would get: the callback router in dry-run mode, so the
    store's keywords (and every other registered handler) answer here as in chat, and nothing is
    written, sent or queued."""

    account = acl.account_for(access, account_id, acl.VIEW)
    info = services.callback_account_by_id(account.id)
    if info is None:
        raise NotFoundError(f"account {account_id} not found")
    ctx = dry_run(
        info,
        {
            "ToUserName": info.original_id or info.appid,
            "FromUserName": TESTER_OPENID,
            "CreateTime": str(int(time.time())),
            "MsgType": "text",
            "Content": text,
        },
    )
    reply = ctx.reply
    return {
        "text": text,
        "rule": ctx.notes.get("rule"),
        "handled_by": ctx.replied_by,
        "reply_type": reply.type if reply else None,
        "reply": reply.data if reply else None,
        "actions": list(ctx.actions),
    }


def rule_action(access: Access, account_id: int, rule_id: int, action: str, ip: str) -> str:
    account = acl.account_for(access, account_id, acl.REPLIES)
    rule = services.get_scoped(ReplyRule, account.id, rule_id)
    name, before = rule.name, {"enabled": rule.enabled, "keywords": rule.keywords, "reply": rule.reply}
    if action == "delete":
        replies.delete_rule(account.id, rule_id)
    else:
        replies.set_rule_enabled(account.id, rule_id, action == "enable")
    staff.audit(
        access.user_id, f"reply.{action}", account_id=account.id, target=f"rule {name}", before=before, ip=ip
    )
    return name


def save_menu(access: Access, account_id: int, tree: Any, ip: str) -> Any:
    account = acl.account_for(access, account_id, acl.MENUS)
    current = menus.get_menu(account.id)
    before = {"tree": current.tree} if current else None
    menu = menus.save_menu(account.id, tree)
    staff.audit(
        access.user_id,
        "menu.save",
        account_id=account.id,
        target="menu",
        before=before,
        after={"tree": menu.tree},
        ip=ip,
    )
    return menu


def publish_menu(access: Access, account_id: int, ip: str) -> Any:
    account = acl.account_for(access, account_id, acl.MENUS)
    menu = menus.publish_menu(account.id)
    staff.audit(
        access.user_id, "menu.publish", account_id=account.id, target="menu", after={"tree": menu.tree}, ip=ip
    )
    return menu


def create_qrcode(access: Access, account_id: int, fields: dict[str, Any], ip: str) -> Any:
    account = acl.account_for(access, account_id, acl.QRCODES)
    code = qrcodes.create_channel_qrcode(account.id, **fields)
    staff.audit(
        access.user_id,
        "qrcode.create",
        account_id=account.id,
        target=f"qrcode {code.scene}",
        after={"name": code.name, "scene": code.scene, "permanent": code.permanent},
        ip=ip,
    )
    return code


def create_staff(
    access: Access, username: str, password: str, display_name: str, is_admin: bool, ip: str
) -> StaffUser:
    acl.require(access, acl.STAFF)
    user = staff.create_user(username, password, display_name=display_name, is_admin=is_admin)
    staff.audit(
        access.user_id, "staff.create", target=user.username, after={"is_admin": user.is_admin}, ip=ip
    )
    return user


def grant(
    access: Access,
    user_id: int,
    role: str,
    account_id: int | None,
    org_unit_code: str | None,
    can_approve: bool,
    ip: str,
) -> Any:
    acl.require(access, acl.STAFF)
    user = staff.user_by_id(user_id)
    new = staff.add_grant(
        user, role, account_id=account_id, org_unit_code=org_unit_code, can_approve=can_approve
    )
    staff.audit(
        access.user_id,
        "grant.add",
        account_id=new.account_id,
        target=user.username,
        after=staff.describe_grant(new),
        ip=ip,
    )
    return new


def revoke(access: Access, user_id: int, grant_id: int, ip: str) -> Any:
    acl.require(access, acl.STAFF)
    user = staff.user_by_id(user_id)
    old = staff.remove_grant(user, grant_id)
    staff.audit(
        access.user_id,
        "grant.remove",
        account_id=old.account_id,
        target=user.username,
        before={"role": old.role.value, "account_id": old.account_id, "org_unit_id": old.org_unit_id},
        ip=ip,
    )
    return old


def set_staff_active(access: Access, user_id: int, active: bool, ip: str) -> StaffUser:
    acl.require(access, acl.STAFF)
    user = staff.user_by_id(user_id)
    if user.id == access.user_id and not active:
        raise acl.ForbiddenError("you cannot deactivate yourself")
    staff.set_active(user, active)
    staff.audit(
        access.user_id, "staff.activate" if active else "staff.deactivate", target=user.username, ip=ip
    )
    return user


def sign_out_everywhere(access: Access, user_id: int, ip: str) -> StaffUser:
    """End every console session of a user (a lost laptop, a departing colleague)."""
    acl.require(access, acl.STAFF)
    user = staff.user_by_id(user_id)
    staff.end_sessions(user)
    staff.audit(access.user_id, "staff.sign_out_everywhere", target=user.username, ip=ip)
    return user
