"""The H5 front door: who a subscriber is on H5 pages (inside WeChat's browser), for every domain
that serves them.

Who the subscriber is comes from OAuth2 ``snsapi_base`` (silent: WeChat redirects back with a code
that we exchange for the openid). The H5 session lives in its own signed cookie (``ws_h5``, path
/h5/, apart from the console's: wechat_service/security.py), one entry per appid (``h5:<appid>``
→ account id, subscriber id, when), so one browser can hold several accounts' pages at once.
A domain's H5 blueprint (under ``/h5/<appid>/``) wraps its views with ``page(...)`` and routes
``/h5/<appid>/login`` and ``/h5/<appid>/oauth/callback`` to ``begin_login`` / ``finish_login``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, redirect, request, session
from flask.typing import ResponseReturnValue

from accounts import subscribers
from accounts.errors import AccountErrorCode
from accounts.models import Account, AccountKind, AccountStatus
from accounts.services import account_by_appid
from wechat_service import oauth
from wechat_service.errors import ForbiddenError, NotFoundError, ServiceError
from wechat_service.extensions import db

SESSION_TTL = 2 * 3600  # then WeChat is asked again (silently: snsapi_base shows nothing)
SESSION_REFRESH = 600
STATE_TTL = 600  # an OAuth round trip left unfinished this long is void
MAX_PENDING_LOGINS = 4  # several tabs may be logging in at once
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class H5User:
    account: Account
    subscriber_id: int

    @property
    def account_id(self) -> int:
        return self.account.id


def home(appid: str) -> str:
    """The account's H5 home (the store's catalogue today): where a sign-in lands by default."""
    return f"/h5/{appid}/"


def _session_key(appid: str) -> str:
    return f"h5:{appid}"


def h5_account(appid: str) -> Account:
    """The official account behind an H5 URL: active, and not a mini-program."""
    account = account_by_appid(appid)
    if account.kind is AccountKind.mini_program:
        raise NotFoundError("no such store")
    if account.status is not AccountStatus.active:
        raise ForbiddenError("该公众号已停用")
    return account


def session_user(account: Account) -> H5User | None:
    entry = session.get(_session_key(account.appid))
    if not isinstance(entry, dict) or entry.get("a") != account.id:
        return None
    age = time.time() - float(entry.get("t", 0))
    if not 0 <= age <= SESSION_TTL:
        return None
    if age > SESSION_REFRESH:  # sliding: an active subscriber is not sent round WeChat mid-purchase
        session[_session_key(account.appid)] = {**entry, "t": time.time()}
    return H5User(account, int(entry["s"]))


def safe_next(appid: str, target: str | None) -> str:
    """Only a relative path inside this account's H5 pages; anything else means its home."""
    default = home(appid)
    if not target or len(target) > 512:
        return default
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not parts.path.startswith(f"/h5/{appid}/")
        or "//" in target
        or "\\" in target
        or ".." in parts.path
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return default
    return target


def begin_login(account: Account, target: str | None) -> ResponseReturnValue:
    """Off to WeChat's authorize page; ``state`` is a nonce bound to this browser's session and
    the page to come back to."""
    now = time.time()
    nonce = secrets.token_urlsafe(16)
    pending = {
        k: v
        for k, v in (session.get("h5_oauth") or {}).items()
        if isinstance(v, list) and len(v) == 3 and now - float(v[2]) < STATE_TTL
    }
    pending[nonce] = [account.appid, safe_next(account.appid, target), now]
    session["h5_oauth"] = dict(sorted(pending.items(), key=lambda kv: kv[1][2])[-MAX_PENDING_LOGINS:])
    callback = f"{current_app.config['PUBLIC_BASE_URL']}/h5/{account.appid}/oauth/callback"
    return redirect(oauth.authorize_url(account.appid, callback, nonce), 302)


def finish_login(appid: str) -> ResponseReturnValue:
    """WeChat's redirect back: the state checked (once), the code exchanged for the openid, the
    H5 session written, and back to the page the subscriber came from."""
    account = h5_account(appid)
    nonce = request.args.get("state", "")
    pending = dict(session.get("h5_oauth") or {})
    entry = pending.pop(nonce, None) if nonce else None
    session["h5_oauth"] = pending  # a state is good for one callback, even a failed one
    if (
        not isinstance(entry, list)
        or len(entry) != 3
        or entry[0] != appid
        or time.time() - float(entry[2]) > STATE_TTL
    ):
        raise ServiceError("登录状态已失效，请重新进入页面", code=AccountErrorCode.invalid_state, status=400)
    code = request.args.get("code", "")
    if not code:
        raise oauth.OAuthCodeError("未获得微信授权，请重新进入页面")
    openid = oauth.openid_for_code(account.appid, account.app_secret, code)
    # A page visit is not a message: last_interaction_at (the 48-hour window) stays as it is.
    subscriber = subscribers.touch(account.id, openid, None)
    db.session.commit()
    session.permanent = True
    session[_session_key(appid)] = {"a": account.id, "s": subscriber.id, "t": time.time()}
    return redirect(safe_next(appid, entry[1]), 302)


def page(
    *, wants_json: Callable[[], bool]
) -> Callable[[Callable[..., ResponseReturnValue]], Callable[..., ResponseReturnValue]]:
    """A decorator for H5 views: the view gets the H5 user instead of the appid; without a
    session, the subscriber is sent through OAuth and comes back to the page (a form POST comes
    back to the home page); a request that ``wants_json`` gets a 401 instead."""

    def decorate(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
        @wraps(view)
        def wrapper(appid: str, **kwargs: Any) -> ResponseReturnValue:
            if any(isinstance(v, int) and not 0 < v <= MAX_ID for v in kwargs.values()):
                raise NotFoundError("页面不存在")
            account = h5_account(appid)
            user = session_user(account)
            if user is None:
                if wants_json():
                    raise ServiceError("请重新进入页面", code=AccountErrorCode.session_required, status=401)
                return begin_login(
                    account, request.full_path.rstrip("?") if request.method == "GET" else None
                )
            return view(user, **kwargs)

        return wrapper

    return decorate
