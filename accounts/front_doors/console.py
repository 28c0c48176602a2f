"""Console plumbing shared by the pages and the JSON API: the signed-in user, idle timeout,
the user's access, the client IP, pagination. Views stay thin on top of it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Blueprint, current_app, flash, redirect, request, session, url_for
from werkzeug.exceptions import Unauthorized

from accounts import access as acl
from accounts import staff as staff_services
from accounts.access import Access, access_for
from accounts.models import StaffUser
from wechat_service.errors import ServiceError
from wechat_service.extensions import db

IDLE_TIMEOUT = 30 * 60
MAX_PAGE = 100_000
MAX_ID = 2**31 - 1  # ids in URLs beyond the database's integer range are simply not found


def check_url_ids() -> None:
    """Ids in the URL beyond the database's integer range: 404 before any query."""
    from werkzeug.exceptions import NotFound

    for value in (request.view_args or {}).values():
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            raise NotFound("no such thing")


def client_ip() -> str:
    # Behind proxies, WECHAT_SERVICE_TRUSTED_PROXIES (werkzeug's ProxyFix, set up in create_app)
    # makes remote_addr the client's; with the default 0 no X-Forwarded-For is believed.
    return request.remote_addr or "unknown"


def sign_in(user: StaffUser) -> None:
    """A new session (renewed cookie and CSRF token) under the user's current generation."""
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["gen"] = user.session_generation
    session["seen"] = time.time()


def sign_out(user: StaffUser | None = None) -> None:
    """End the session here and, when we know whose it is, on the server too: a copy of the
    cookie kept from before is refused (every session of the user ends: one generation each)."""
    if user is not None:
        staff_services.end_sessions(user)
    session.clear()


def load_user() -> StaffUser | None:
    """The signed-in user, or None: signed out, idle too long, deactivated, or the session ended
    on the server (logout, password change, sign out everywhere: the generation moved on)."""
    # Cached on the request (not on g: an app context may outlive one request).
    env = request.environ
    if "wechat_service.console_user" in env:
        return env["wechat_service.console_user"]
    user = None
    uid = session.get("uid")
    idle = current_app.config.get("CONSOLE_IDLE_TIMEOUT", IDLE_TIMEOUT)
    if uid and time.time() - float(session.get("seen", 0)) <= idle:
        candidate = db.session.get(StaffUser, uid)
        if candidate and candidate.is_active and session.get("gen") == candidate.session_generation:
            user = candidate
            session["seen"] = time.time()
    if user is None and uid:
        session.clear()
    env["wechat_service.console_user"] = user
    return user


def current_user() -> StaffUser:
    user = load_user()
    if user is None:
        raise Unauthorized("sign in first")
    return user


def current_access() -> Access:
    env = request.environ
    if "wechat_service.console_access" not in env:
        env["wechat_service.console_access"] = access_for(current_user())
    return env["wechat_service.console_access"]


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if load_user() is None:
            return redirect(url_for("console.login", next=request.full_path))
        return view(*args, **kwargs)

    return wrapper


@dataclass
class Page:
    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def paginate(query: Any, page: int | None = None, per_page: int = 25) -> Page:
    import sqlalchemy as sa

    page = min(max(1, page or request.args.get("page", 1, type=int) or 1), MAX_PAGE)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.order_by(None).subquery())) or 0
    items = list(db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)))
    return Page(items, page, per_page, total)


def page_body(items: list[Any], page: Page) -> dict[str, Any]:
    """A page of an API list: its items (already dumped or dumpable) and where it stands."""
    return {"items": items, "page": page.page, "per_page": page.per_page, "total": page.total}


def console_blueprint(name: str, import_name: str, url_prefix: str = "/console") -> Blueprint:
    """A blueprint of console pages: any page about an account the user cannot see is a 404
    before the view runs, whatever the view does next (one rule for every domain; a domain adds
    its own checks for its own ids with another ``before_request``)."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix, template_folder="templates")

    @bp.before_request
    def _hide_other_accounts() -> None:
        check_url_ids()
        account_id = (request.view_args or {}).get("account_id")
        if account_id is not None and load_user() is not None:
            acl.account_for(current_access(), account_id, acl.VIEW)

    return bp


def form_failed(exc: ServiceError) -> dict[str, list[str]]:
    """A refused form: roll back, flash the message, return the field errors for the template."""
    db.session.rollback()
    flash(exc.message, "error")
    return {
        k: [str(m) for m in v] if isinstance(v, list) else [str(v)] for k, v in (exc.fields or {}).items()
    }
