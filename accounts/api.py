"""The console JSON API under /api/v1: the same operations, roles and scoping as the pages.

Authenticated by the console session cookie; every state-changing call needs the CSRF token
(header ``X-CSRFToken``, from ``GET /api/v1/session``). Documented at /api/v1/openapi.json.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import generate_csrf
from werkzeug.exceptions import Unauthorized

from accounts import access as acl
from accounts import masking, menus, operations, qrcodes, replies, services, staff, subscribers
from accounts.errors import AccountErrorCode
from accounts.front_doors.console import (
    check_url_ids,
    client_ip,
    current_access,
    current_user,
    load_user,
    page_body,
    paginate,
)
from accounts.models import Menu, ReplyRule, StaffUser, Subscriber
from accounts.overview import matrix_overview
from accounts.schemas import (
    AccountCreateSchema,
    AccountPageSchema,
    AccountSchema,
    AccountUpdateSchema,
    AuditPageSchema,
    AuditQuerySchema,
    EventPageSchema,
    GrantCreateSchema,
    GrantSchema,
    MenuSchema,
    MenuUpdateSchema,
    OverviewRowSchema,
    PageQuerySchema,
    QRCodeCreateSchema,
    QRCodeSchema,
    RevealSchema,
    RuleCreateSchema,
    RuleSchema,
    SessionSchema,
    StaffCreateSchema,
    StaffSchema,
    StatusSchema,
    SubscriberPageSchema,
    SubscriberQuerySchema,
    SubscriberSchema,
    TryResultSchema,
    TrySchema,
)
from wechat_service.errors import ServiceError
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db
from wechat_service.gateway import WeChatAPIError, token_health

blp = Blueprint("console_api", __name__, url_prefix="/api/v1", description="Console API (session + CSRF)")


@blp.before_request
def _authorise_first() -> None:
    """Before any body is parsed: signed in, and the account in the URL visible to the user —
    so a request about someone else's account learns nothing, not even a validation error."""
    if load_user() is None:
        raise Unauthorized("sign in to the console first")
    check_url_ids()
    account_id = (request.view_args or {}).get("account_id")
    if account_id is not None:
        acl.account_for(current_access(), account_id, acl.VIEW)
    for prefix, permission in ADMIN_ONLY.items():
        if request.path.startswith(prefix):
            acl.require(current_access(), permission)


ADMIN_ONLY = {"/api/v1/staff": acl.STAFF, "/api/v1/audit": acl.AUDIT}


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if load_user() is None:
            raise Unauthorized("sign in to the console first")
        return view(*args, **kwargs)

    return wrapper


def _describe(access: acl.Access, account: Any, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """Secrets' last characters only for those who may manage the account's settings."""
    return services.describe_account(account, health, secret_tails=access.can(acl.EDIT, account.id))


@blp.get("/session")
@blp.response(200, SessionSchema)
@signed_in
def session_info() -> ResponseReturnValue:
    return {"user": current_user(), "csrf_token": generate_csrf()}


@blp.get("/overview")
@blp.response(200, OverviewRowSchema(many=True))
@signed_in
def overview() -> ResponseReturnValue:
    return matrix_overview(current_access(), token_health)


@blp.get("/accounts")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, AccountPageSchema)
@signed_in
def account_list(query: dict[str, Any]) -> ResponseReturnValue:
    access = current_access()
    page = paginate(acl.scoped_accounts(access), query["page"], query["per_page"])
    return page_body([_describe(access, a) for a in page.items], page)


@blp.post("/accounts")
@blp.arguments(AccountCreateSchema)
@blp.response(201, AccountSchema)
@signed_in
def account_create(data: dict[str, Any]) -> ResponseReturnValue:
    org = data.pop("org_unit")
    account = operations.create_account(
        current_access(), {k: v for k, v in data.items() if v is not None}, org, client_ip()
    )
    db.session.commit()
    return services.describe_account(account)


@blp.get("/accounts/<int:account_id>")
@blp.response(200, AccountSchema)
@signed_in
def account_get(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    return _describe(access, account, token_health(account.appid))


@blp.patch("/accounts/<int:account_id>")
@blp.arguments(AccountUpdateSchema)
@blp.response(200, AccountSchema)
@signed_in
def account_update(data: dict[str, Any], account_id: int) -> ResponseReturnValue:
    org = data.pop("org_unit", None)
    account = operations.update_account(current_access(), account_id, data, org, client_ip())
    db.session.commit()
    return services.describe_account(account)


@blp.post("/accounts/<int:account_id>/rotate-aes-key")
@blp.response(200, AccountSchema)
@signed_in
def account_rotate(account_id: int) -> ResponseReturnValue:
    account = operations.rotate_aes_key(current_access(), account_id, client_ip())
    db.session.commit()
    out = services.describe_account(account)
    out["aes_key"] = account.aes_key  # shown once, to paste into the WeChat admin
    return out


@blp.post("/accounts/<int:account_id>/status")
@blp.arguments(StatusSchema)
@blp.response(200, AccountSchema)
@signed_in
def account_status(data: dict[str, Any], account_id: int) -> ResponseReturnValue:
    account = operations.set_status(current_access(), account_id, data["active"], client_ip())
    db.session.commit()
    return services.describe_account(account)


@blp.get("/accounts/<int:account_id>/subscribers")
@blp.arguments(SubscriberQuerySchema, location="query")
@blp.response(200, SubscriberPageSchema)
@signed_in
def subscriber_list(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.SUBSCRIBERS)
    page = paginate(
        subscribers.search_subscribers(
            account.id,
            q=query["q"],
            tag=query["tag"],
            channel_id=query["channel"],
            exact=not access.unmasked(account.id),
        ),
        query["page"],
        query["per_page"],
    )
    unmasked = access.unmasked(account.id)
    return page_body([masking.subscriber_view(s, unmasked) for s in page.items], page)


@blp.get("/accounts/<int:account_id>/subscribers/<int:subscriber_id>/events")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, EventPageSchema)
@signed_in
def subscriber_events(query: dict[str, Any], account_id: int, subscriber_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.SUBSCRIBERS)
    sub = services.get_scoped(Subscriber, account.id, subscriber_id)
    page = paginate(subscribers.events_of(account.id, sub.id), query["page"], query["per_page"])
    unmasked = access.unmasked(account.id)
    rows = [masking.event_view(e, unmasked) for e in page.items]
    return page_body(rows, page)


@blp.post("/accounts/<int:account_id>/subscribers/<int:subscriber_id>/reveal")
@blp.arguments(RevealSchema)
@blp.response(200, SubscriberSchema)
@signed_in
def subscriber_reveal(data: dict[str, Any], account_id: int, subscriber_id: int) -> ResponseReturnValue:
    sub = operations.reveal_subscriber(
        current_access(), account_id, subscriber_id, data["reason"], client_ip()
    )
    db.session.commit()
    return masking.subscriber_view(sub, True)


@blp.get("/accounts/<int:account_id>/rules")
@blp.response(200, RuleSchema(many=True))
@signed_in
def rule_list(account_id: int) -> ResponseReturnValue:
    account = acl.account_for(current_access(), account_id, acl.VIEW)
    return replies.list_rules(account.id)


@blp.post("/accounts/<int:account_id>/rules")
@blp.arguments(RuleCreateSchema)
@blp.response(201, RuleSchema)
@signed_in
def rule_create(data: dict[str, Any], account_id: int) -> ReplyRule:
    rule = operations.add_rule(current_access(), account_id, data, client_ip())
    db.session.commit()
    return rule


@blp.post("/accounts/<int:account_id>/rules/<int:rule_id>/<any(enable, disable, delete):action>")
@blp.response(204)
@signed_in
def rule_action(account_id: int, rule_id: int, action: str) -> ResponseReturnValue:
    operations.rule_action(current_access(), account_id, rule_id, action, client_ip())
    db.session.commit()
    return ""


@blp.post("/accounts/<int:account_id>/rules/try")
@blp.arguments(TrySchema)
@blp.response(200, TryResultSchema)
@signed_in
def rule_try(data: dict[str, Any], account_id: int) -> ResponseReturnValue:
    """What a subscriber sending this text would get, routed as a real callback (store keywords
    included) without its effects; ``actions`` lists what the handlers would have done."""
    return operations.try_message(current_access(), account_id, data["text"])


@blp.get("/accounts/<int:account_id>/menu")
@blp.response(200, MenuSchema)
@signed_in
def menu_get(account_id: int) -> Menu | dict[str, Any]:
    account = acl.account_for(current_access(), account_id, acl.VIEW)
    return menus.get_menu(account.id) or {}


@blp.put("/accounts/<int:account_id>/menu")
@blp.arguments(MenuUpdateSchema)
@blp.response(200, MenuSchema)
@signed_in
def menu_put(data: dict[str, Any], account_id: int) -> ResponseReturnValue:
    menu = operations.save_menu(current_access(), account_id, data, client_ip())
    db.session.commit()
    return menu


@blp.post("/accounts/<int:account_id>/menu/publish")
@blp.response(200, MenuSchema)
@signed_in
def menu_publish(account_id: int) -> ResponseReturnValue:
    try:
        menu = operations.publish_menu(current_access(), account_id, client_ip())
    except WeChatAPIError as exc:
        raise ServiceError(
            f"WeChat refused the menu: {exc.errcode} {exc.errmsg}",
            code=AccountErrorCode.wechat_error,
            status=502,
        ) from None
    db.session.commit()
    return menu


@blp.get("/accounts/<int:account_id>/qrcodes")
@blp.response(200, QRCodeSchema(many=True))
@signed_in
def qrcode_list(account_id: int) -> ResponseReturnValue:
    account = acl.account_for(current_access(), account_id, acl.VIEW)
    stats = qrcodes.channel_stats(account.id)
    return [
        {
            **{
                c: getattr(code, c)
                for c in ("id", "name", "channel_type", "scene", "permanent", "url", "expires_at")
            },
            "follows": stats.get(code.id, {}).get("follow", 0),
            "scans": stats.get(code.id, {}).get("scan", 0),
        }
        for code in qrcodes.list_channel_qrcodes(account.id)
    ]


@blp.post("/accounts/<int:account_id>/qrcodes")
@blp.arguments(QRCodeCreateSchema)
@blp.response(201, QRCodeSchema)
@signed_in
def qrcode_create(data: dict[str, Any], account_id: int) -> ResponseReturnValue:
    try:
        code = operations.create_qrcode(current_access(), account_id, data, client_ip())
    except WeChatAPIError as exc:
        raise ServiceError(
            f"WeChat refused: {exc.errcode} {exc.errmsg}", code=AccountErrorCode.wechat_error, status=502
        ) from None
    db.session.commit()
    return {
        **{
            c: getattr(code, c)
            for c in ("id", "name", "channel_type", "scene", "permanent", "url", "expires_at")
        },
        "follows": 0,
        "scans": 0,
    }


@blp.get("/staff")
@blp.response(200, StaffSchema(many=True))
@signed_in
def staff_list() -> ResponseReturnValue:
    acl.require(current_access(), acl.STAFF)
    return staff.list_users()


@blp.post("/staff")
@blp.arguments(StaffCreateSchema)
@blp.response(201, StaffSchema)
@signed_in
def staff_create(data: dict[str, Any]) -> StaffUser:
    user = operations.create_staff(
        current_access(),
        data["username"],
        data["password"],
        data["display_name"],
        data["is_admin"],
        client_ip(),
    )
    db.session.commit()
    return user


@blp.get("/staff/<int:user_id>/grants")
@blp.response(200, GrantSchema(many=True))
@signed_in
def grant_list(user_id: int) -> ResponseReturnValue:
    acl.require(current_access(), acl.STAFF)
    return [staff.describe_grant(g) for g in staff.grants_of(staff.user_by_id(user_id).id)]


@blp.post("/staff/<int:user_id>/grants")
@blp.arguments(GrantCreateSchema)
@blp.response(201, GrantSchema)
@signed_in
def grant_create(data: dict[str, Any], user_id: int) -> ResponseReturnValue:
    grant = operations.grant(
        current_access(),
        user_id,
        data["role"],
        data["account_id"],
        data["org_unit"],
        data["can_approve"],
        client_ip(),
    )
    db.session.commit()
    return staff.describe_grant(grant)


@blp.delete("/staff/<int:user_id>/grants/<int:grant_id>")
@blp.response(204)
@signed_in
def grant_delete(user_id: int, grant_id: int) -> ResponseReturnValue:
    operations.revoke(current_access(), user_id, grant_id, client_ip())
    db.session.commit()
    return ""


@blp.post("/staff/<int:user_id>/sign-out-everywhere")
@blp.response(204)
@signed_in
def staff_sign_out_everywhere(user_id: int) -> ResponseReturnValue:
    """End every console session of the user (admins only)."""
    operations.sign_out_everywhere(current_access(), user_id, client_ip())
    db.session.commit()
    return ""


@blp.get("/audit")
@blp.arguments(AuditQuerySchema, location="query")
@blp.response(200, AuditPageSchema)
@signed_in
def audit_list(query: dict[str, Any]) -> ResponseReturnValue:
    acl.require(current_access(), acl.AUDIT)
    page = paginate(
        staff.audit_query(
            account_ids=None, user_id=query["user"], account_id=query["account"], action=query["action"]
        ),
        query["page"],
        query["per_page"],
    )
    return page_body(list(page.items), page)
