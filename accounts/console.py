"""Console pages (server-rendered). Thin: parse → authorise (access) → one service → render.

Every account page loads its account through ``access.account_for``, the one scoping helper.
"""

from __future__ import annotations

import io
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext

from accounts import access as acl
from accounts import masking, menus, operations, qrcodes, replies, services, staff, subscribers, timeline
from accounts.errors import AccountErrorCode
from accounts.front_doors.console import (
    client_ip,
    console_blueprint,
    current_access,
    current_user,
    form_failed,
    load_user,
    login_required,
    paginate,
    sign_in,
    sign_out,
)
from accounts.models import ChannelQRCode, StaffUser, Subscriber
from accounts.overview import account_names, matrix_overview
from wechat_service import i18n
from wechat_service.errors import ErrorCode, ServiceError
from wechat_service.extensions import db
from wechat_service.gateway import WeChatAPIError, token_health

bp = console_blueprint("console", __name__)
_fail = form_failed


# -- sign in -----------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    errors: dict[str, list[str]] = {}
    need_code = False
    if request.method == "POST":
        form = request.form
        try:
            user = staff.authenticate(
                form.get("username", ""), form.get("password", ""), client_ip(), form.get("code") or None
            )
        except staff.ThrottledError as exc:
            db.session.rollback()
            flash(exc.message, "error")
            return render_template("accounts/login.html", errors=errors, need_code=need_code), 429
        except staff.LoginError as exc:
            need_code = exc.code == AccountErrorCode.totp_required
            errors = _fail(exc)
            if not need_code:
                # Every password (or code) check that failed, with who was tried and from where.
                name = (form.get("username") or "").strip().lower()[:64]
                known = db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == name))
                staff.audit(known, "login.failed", target=name, ip=client_ip())
                db.session.commit()
            return render_template("accounts/login.html", errors=errors, need_code=need_code), 401
        staff.audit(user.id, "login", ip=client_ip())
        db.session.commit()
        sign_in(user)
        target = request.args.get("next") or ""
        # Only local targets: never an open redirect.
        return redirect(target if target.startswith("/console") else url_for("console.overview"))
    return render_template("accounts/login.html", errors=errors, need_code=need_code)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    user = load_user()
    if user:
        staff.audit(user.id, "logout", ip=client_ip())
        sign_out(user)  # ends the session on the server too, before the commit
        db.session.commit()
    sign_out()
    flash("Signed out.", "info")
    return redirect(url_for("console.login"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password() -> ResponseReturnValue:
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        user = current_user()
        try:
            staff.change_password(
                user, request.form.get("current_password", ""), request.form.get("new_password", "")
            )
            staff.audit(user.id, "password.change", target=user.username, ip=client_ip())
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            sign_in(user)
            flash("Password changed.", "success")
            return redirect(url_for("console.overview"))
    return render_template("accounts/password.html", errors=errors)


@bp.route("/language", methods=["GET", "POST"])
@login_required
def language() -> ResponseReturnValue:
    """The staff member's language and timezone (the console speaks Chinese unless they choose)."""
    errors: dict[str, list[str]] = {}
    user = current_user()
    if request.method == "POST":
        try:
            before = {"locale": user.locale, "timezone": user.timezone}
            staff.set_language(user, request.form.get("locale", ""), request.form.get("timezone", ""))
            staff.audit(user.id, "staff.language", target=user.username, ip=client_ip(), before=before,
                        after={"locale": user.locale, "timezone": user.timezone})  # fmt: skip
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            i18n.use(user.locale or i18n.DEFAULT_LOCALE)
            flash(gettext("Language and timezone saved."), "success")
            return redirect(url_for("console.language"))
    return render_template(
        "accounts/language.html", errors=errors, user=user, locales=i18n.LOCALES, zones=staff.TIMEZONES
    )


@bp.route("/totp", methods=["GET", "POST"])
@login_required
def totp() -> ResponseReturnValue:
    user = current_user()
    errors: dict[str, list[str]] = {}
    secret = request.form.get("secret")
    if request.method == "POST":
        form = request.form
        try:
            replacing = bool(user.totp_secret)
            staff.enable_totp(
                user,
                secret or "",
                form.get("code", ""),
                password=form.get("password", ""),
                current_code=form.get("current_code", ""),
            )
            staff.audit(
                user.id, "totp.replace" if replacing else "totp.enable", target=user.username, ip=client_ip()
            )
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash("Two-factor sign-in is on.", "success")
            return redirect(url_for("console.overview"))
    if not secret:
        secret, _ = staff.start_totp()
    import pyotp

    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name="wechat-service")
    return render_template(
        "accounts/totp.html", secret=secret, uri=uri, errors=errors, enabled=bool(user.totp_secret)
    )


@bp.post("/totp/disable")
@login_required
def totp_disable() -> ResponseReturnValue:
    user = current_user()
    try:
        staff.disable_totp(user, request.form.get("password", ""), request.form.get("code", ""))
        staff.audit(user.id, "totp.disable", target=user.username, ip=client_ip())
        db.session.commit()
    except ServiceError as exc:
        errors = _fail(exc)
        secret, _ = staff.start_totp()
        import pyotp

        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name="wechat-service")
        return render_template(
            "accounts/totp.html", secret=secret, uri=uri, errors=errors, enabled=bool(user.totp_secret)
        )
    flash("Two-factor sign-in is off.", "success")
    return redirect(url_for("console.overview"))


# -- matrix --------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def overview() -> ResponseReturnValue:
    rows = matrix_overview(current_access(), token_health)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(" / ".join(row["org_path"]) or "(no org unit)", []).append(row)
    return render_template("accounts/overview.html", groups=groups)


@bp.get("/accounts")
@login_required
def account_list() -> ResponseReturnValue:
    page = paginate(acl.scoped_accounts(current_access()))
    return render_template("accounts/account_list.html", page=page)


ACCOUNT_FIELDS = (
    "name",
    "appid",
    "app_secret",
    "kind",
    "original_id",
    "token",
    "aes_key",
    "message_mode",
    "timezone",
)


@bp.route("/accounts/new", methods=["GET", "POST"])
@login_required
def account_new() -> ResponseReturnValue:
    access = current_access()
    if not access.is_admin:
        abort(403)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        fields = {k: (form.get(k) or "").strip() for k in ACCOUNT_FIELDS if (form.get(k) or "").strip()}
        try:
            account = operations.create_account(access, fields, form.get("org_unit"), client_ip())
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(
                f"Account {account.name} created. Paste the callback URL and token into the WeChat admin.",
                "success",
            )
            return redirect(url_for("console.account_detail", account_id=account.id))
    return render_template(
        "accounts/account_form.html", account=None, form=form, errors=errors, units=services.list_org_units()
    )


@bp.route("/accounts/<int:account_id>", methods=["GET", "POST"])
@login_required
def account_detail(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        changes = {
            k: (form.get(k) or "").strip()
            for k in ACCOUNT_FIELDS
            if k != "appid" and (form.get(k) or "").strip()
        }
        try:
            operations.update_account(access, account_id, changes, form.get("org_unit"), client_ip())
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash("Settings saved.", "success")
            return redirect(url_for("console.account_detail", account_id=account.id))
    return render_template(
        "accounts/account_form.html",
        account=services.describe_account(
            account, token_health(account.appid), secret_tails=access.can(acl.EDIT, account_id)
        ),
        form=form,
        errors=errors,
        units=services.list_org_units(),
        can_edit=access.can(acl.EDIT, account_id),
    )


@bp.post("/accounts/<int:account_id>/rotate-aes-key")
@login_required
def account_rotate(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = operations.rotate_aes_key(access, account_id, client_ip())
    db.session.commit()
    # Shown in this response only: a flash message would travel in the (signed, not encrypted)
    # session cookie.
    return render_template(
        "accounts/account_form.html",
        account=services.describe_account(account, token_health(account.appid)),
        form={},
        errors={},
        units=services.list_org_units(),
        can_edit=True,
        new_aes_key=account.aes_key,
    )


@bp.post("/accounts/<int:account_id>/status")
@login_required
def account_status(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = operations.set_status(access, account_id, request.form.get("status") == "active", client_ip())
    db.session.commit()
    flash(f"Account {account.status.value}.", "success")
    return redirect(url_for("console.account_detail", account_id=account.id))


# -- subscribers ---------------------------------------------------------------------------------


@bp.get("/accounts/<int:account_id>/subscribers")
@login_required
def subscriber_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.SUBSCRIBERS)
    args = request.args
    query = subscribers.search_subscribers(
        account.id,
        q=args.get("q") or None,
        tag=args.get("tag") or None,
        channel_id=args.get("channel", type=int),
        exact=not access.unmasked(account.id),
    )
    page = paginate(query)
    unmasked = access.unmasked(account.id)
    tags = subscribers.tags_of([s.id for s in page.items])
    rows = [{**masking.subscriber_view(s, unmasked), "tags": tags.get(s.id, [])} for s in page.items]
    channels = qrcodes.list_channel_qrcodes(account.id)
    return render_template(
        "accounts/subscriber_list.html", account=account, page=page, rows=rows, args=args, channels=channels
    )


@bp.get("/accounts/<int:account_id>/subscribers/<int:subscriber_id>")
@login_required
def subscriber_detail(account_id: int, subscriber_id: int, revealed: bool = False) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.SUBSCRIBERS)
    sub = services.get_scoped(Subscriber, account.id, subscriber_id)
    unmasked = revealed or access.unmasked(account.id)
    page = paginate(subscribers.events_of(account.id, sub.id), per_page=50)
    events = [masking.event_view(e, unmasked) for e in page.items]
    return render_template(
        "accounts/subscriber_detail.html",
        account=account,
        sub=masking.subscriber_view(sub, unmasked),
        page=page,
        events=events,
        timeline=timeline.of(account.id, sub.id, limit=50, unmasked=unmasked),
        can_reveal=access.can(acl.REVEAL, account.id) and not unmasked,
    )


@bp.post("/accounts/<int:account_id>/subscribers/<int:subscriber_id>/reveal")
@login_required
def subscriber_reveal(account_id: int, subscriber_id: int) -> ResponseReturnValue:
    access = current_access()
    operations.reveal_subscriber(
        access, account_id, subscriber_id, request.form.get("reason") or "", client_ip()
    )
    db.session.commit()
    return subscriber_detail(account_id, subscriber_id, revealed=True)


# -- replies -------------------------------------------------------------------------------------


@bp.route("/accounts/<int:account_id>/replies", methods=["GET", "POST"])
@login_required
def reply_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        kind = form.get("kind") or "keyword"
        reply_type = form.get("reply_type") or "text"
        body: dict[str, Any] = {"content": form.get("content", "")}
        if reply_type == "image":
            body = {"media_id": form.get("content", "")}
        elif reply_type == "news":
            body = {
                "articles": [
                    {
                        "title": form.get("title", ""),
                        "description": form.get("content", ""),
                        "url": form.get("url", ""),
                        "image": "",
                    }
                ]
            }
        try:
            rule = operations.add_rule(
                access,
                account_id,
                {
                    "name": form.get("name") or kind,
                    "kind": kind,
                    "keywords": (form.get("keywords") or "").replace("，", ",").split(","),
                    "match_mode": form.get("match_mode") or "exact",
                    "priority": int(form.get("priority") or 0),
                    "reply_type": reply_type,
                    "reply": body,
                },
                client_ip(),
            )
            db.session.commit()
        except ValueError:
            errors = _fail(ServiceError("priority must be a number", fields={"priority": ["invalid"]}))
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(f"Rule {rule.name} added.", "success")
            return redirect(url_for("console.reply_list", account_id=account.id))
    probe = request.args.get("try")
    tried = operations.try_message(access, account.id, probe[:2000]) if probe is not None else None
    page = paginate(replies.rules_query(account.id), per_page=50)
    return render_template(
        "accounts/replies.html",
        account=account,
        rules=page.items,
        page=page,
        form=form,
        errors=errors,
        tried=tried,
        slow=replies.slow_rule_ids(account.id),
        can_edit=access.can(acl.REPLIES, account.id),
    )


@bp.post("/accounts/<int:account_id>/replies/<int:rule_id>/<any(enable, disable, delete):action>")
@login_required
def reply_action(account_id: int, rule_id: int, action: str) -> ResponseReturnValue:
    access = current_access()
    name = operations.rule_action(access, account_id, rule_id, action, client_ip())
    db.session.commit()
    flash(f"Rule {name}: {action}d.", "success")
    return redirect(url_for("console.reply_list", account_id=account_id))


# -- menu ----------------------------------------------------------------------------------------


@bp.route("/accounts/<int:account_id>/menu", methods=["GET", "POST"])
@login_required
def menu_editor(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    menu = menus.get_menu(account.id)
    errors: dict[str, list[str]] = {}
    rows = menus.rows_from_tree(menu.tree if menu else None)
    if request.method == "POST":
        rows = [
            {
                key: request.form.get(f"{i}-{key}", "")
                for key in ("top", "sub", "name", "type", "value", "appid", "pagepath")
            }
            for i in range(len(rows))
        ]
        try:
            menu = operations.save_menu(access, account_id, menus.tree_from_rows(rows), client_ip())
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash("Menu saved. Publish it to show it to subscribers.", "success")
            return redirect(url_for("console.menu_editor", account_id=account.id))
    return render_template(
        "accounts/menu.html",
        account=account,
        menu=menu,
        rows=rows,
        errors=errors,
        can_edit=access.can(acl.MENUS, account.id),
    )


@bp.post("/accounts/<int:account_id>/menu/publish")
@login_required
def menu_publish(account_id: int) -> ResponseReturnValue:
    access = current_access()
    acl.account_for(access, account_id, acl.MENUS)
    try:
        operations.publish_menu(access, account_id, client_ip())
        db.session.commit()
    except WeChatAPIError as exc:
        db.session.rollback()
        flash(f"WeChat refused the menu: {exc.errcode} {exc.errmsg}", "error")
    except ServiceError as exc:
        _fail(exc)
    else:
        flash("Menu published to WeChat.", "success")
    return redirect(url_for("console.menu_editor", account_id=account_id))


# -- channel QR codes ------------------------------------------------------------------------------


@bp.route("/accounts/<int:account_id>/qrcodes", methods=["GET", "POST"])
@login_required
def qrcode_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        try:
            permanent = form.get("permanent") != "0"
            code = operations.create_qrcode(
                access,
                account_id,
                {
                    "name": form.get("name") or form.get("scene", ""),
                    "scene": form.get("scene", ""),
                    "channel_type": form.get("channel_type") or "other",
                    "permanent": permanent,
                    "expire_seconds": None if permanent else int(form.get("expire_days") or 30) * 86400,
                },
                client_ip(),
            )
            db.session.commit()
        except ValueError:
            errors = _fail(ServiceError("days must be a number", fields={"expire_days": ["invalid"]}))
        except WeChatAPIError as exc:
            errors = _fail(ServiceError(f"WeChat refused: {exc.errcode} {exc.errmsg}"))
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(f"QR code {code.name} created.", "success")
            return redirect(url_for("console.qrcode_list", account_id=account.id))
    stats = qrcodes.channel_stats(account.id)
    page = paginate(qrcodes.qrcodes_query(account.id), per_page=50)
    return render_template(
        "accounts/qrcodes.html",
        account=account,
        codes=page.items,
        page=page,
        stats=stats,
        form=form,
        errors=errors,
        can_edit=access.can(acl.QRCODES, account.id),
    )


@bp.get("/accounts/<int:account_id>/qrcodes/<int:code_id>.png")
@login_required
def qrcode_png(account_id: int, code_id: int) -> ResponseReturnValue:
    import segno

    account = acl.account_for(current_access(), account_id, acl.VIEW)
    code = services.get_scoped(ChannelQRCode, account.id, code_id)
    buffer = io.BytesIO()
    segno.make(code.url or code.ticket or code.scene, error="m").save(buffer, kind="png", scale=8, border=2)
    buffer.seek(0)
    return send_file(
        buffer,
        mimetype="image/png",
        download_name=f"{account.appid}-{code.scene}.png",
        as_attachment=request.args.get("download") == "1",
    )


# -- staff and audit (admins) ---------------------------------------------------------------------


@bp.route("/staff", methods=["GET", "POST"])
@login_required
def staff_list() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.STAFF)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        try:
            user = operations.create_staff(
                access,
                form.get("username", ""),
                form.get("password", ""),
                form.get("display_name", ""),
                form.get("is_admin") == "1",
                client_ip(),
            )
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(f"User {user.username} created.", "success")
            return redirect(url_for("console.staff_detail", user_id=user.id))
    page = paginate(sa.select(StaffUser).order_by(StaffUser.username))
    return render_template("accounts/staff_list.html", page=page, form=form, errors=errors)


@bp.route("/staff/<int:user_id>", methods=["GET", "POST"])
@login_required
def staff_detail(user_id: int) -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.STAFF)
    user = staff.user_by_id(user_id)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        action = form.get("action")
        try:
            if action == "grant":
                scope = form.get("scope", "")
                operations.grant(
                    access,
                    user.id,
                    form.get("role", ""),
                    int(scope[2:]) if scope.startswith("a:") and scope[2:].isdigit() else None,
                    scope[2:] if scope.startswith("o:") else None,
                    form.get("can_approve") == "1",
                    client_ip(),
                )
            elif action == "revoke":
                grant_id = form.get("grant_id", "")
                if not grant_id.isdigit():
                    raise ServiceError("no such grant", code=ErrorCode.not_found, status=404)
                operations.revoke(access, user.id, int(grant_id), client_ip())
            elif action in ("activate", "deactivate"):
                operations.set_staff_active(access, user.id, action == "activate", client_ip())
            elif action == "sign_out_everywhere":
                operations.sign_out_everywhere(access, user.id, client_ip())
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash("Saved.", "success")
            return redirect(url_for("console.staff_detail", user_id=user.id))
    grants = [staff.describe_grant(g) for g in staff.grants_of(user.id)]
    scopes = [("", "—")] + [(f"a:{a.id}", f"account {a.name}") for a in services.list_accounts()]
    scopes += [(f"o:{u.code}", f"org unit {u.code} ({u.name})") for u in services.list_org_units()]
    return render_template(
        "accounts/staff_detail.html",
        user=user,
        grants=grants,
        errors=errors,
        scopes=scopes,
        roles=[r.value for r in acl.ROLE_PERMISSIONS],
    )


@bp.get("/audit")
@login_required
def audit_log() -> ResponseReturnValue:
    access = current_access()
    acl.require(access, acl.AUDIT)
    args = request.args
    query = staff.audit_query(
        account_ids=None,
        user_id=args.get("user", type=int),
        account_id=args.get("account", type=int),
        action=args.get("action") or None,
    )
    page = paginate(query, per_page=50)
    users = {u.id: u.username for u in staff.list_users()}

    names = account_names([e.account_id for e in page.items if e.account_id])
    return render_template("accounts/audit.html", page=page, users=users, names=names, args=args)
