"""WeChat web OAuth2 and the JS-SDK ticket, as the service sees them.

``/wechat-open/connect/oauth2/authorize`` plays the WeChat client: for the chosen subscriber
(``openid`` in the query, else the account's current OAuth user set through the admin API, else
a new one that becomes the current user) it redirects to ``redirect_uri`` with a single-use code
and the ``state``. ``/wechat/sns/oauth2/access_token`` exchanges the code (5 minutes, once) and
``/wechat/cgi-bin/ticket/getticket`` hands out the account's jsapi_ticket.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, request
from flask.typing import ResponseReturnValue

from simulator.wechat import authed, err
from simulator.wechat import state as wechat_state

open_bp = Blueprint("sim_oauth_open", __name__, url_prefix="/wechat-open")
bp = Blueprint("sim_oauth", __name__, url_prefix="/wechat")
admin = Blueprint("sim_oauth_admin", __name__, url_prefix="/_sim/accounts")

CODE_TTL = 300
TICKET_TTL = 7200
SCOPES = ("snsapi_base", "snsapi_userinfo")


@dataclass
class OAuthState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # appid -> the current subscriber's openid
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)  # appid -> {ticket, expires_at}
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, appid: str, what: str) -> None:
        counters = self.stats.setdefault(
            appid, {"authorize": 0, "code_exchanges": 0, "code_failures": 0, "getticket": 0}
        )
        counters[what] += 1


def state() -> OAuthState:
    st = current_app.extensions.get("sim_oauth")
    if st is None:
        st = current_app.extensions["sim_oauth"] = OAuthState()
    return st


def _issue(st: OAuthState, appid: str, openid: str, scope: str, issued_at: float) -> str:
    code = secrets.token_urlsafe(24)
    st.codes[code] = {"appid": appid, "openid": openid, "scope": scope, "issued_at": issued_at, "used": False}
    return code


def _error_page(errcode: int, message: str) -> Response:
    # WeChat shows the user an HTML error page; it never reaches the service.
    return Response(
        f"<!doctype html><title>微信</title><p>Oops! Something went wrong:( {errcode} {message}</p>",
        status=400,
        content_type="text/html; charset=utf-8",
    )


@open_bp.get("/connect/oauth2/authorize")
def authorize() -> ResponseReturnValue:
    appid = request.args.get("appid", "")
    if wechat_state().account(appid) is None:
        return _error_page(10001, "appid 参数错误")
    if request.args.get("response_type") != "code":
        return _error_page(10004, "response_type 参数错误")
    scope = request.args.get("scope", "")
    if scope not in SCOPES:
        return _error_page(10005, "scope 参数错误")
    redirect_uri = request.args.get("redirect_uri", "")
    if urlsplit(redirect_uri).scheme not in ("http", "https") or not urlsplit(redirect_uri).netloc:
        return _error_page(10003, "redirect_uri 参数错误")
    st = state()
    with st.lock:
        openid = request.args.get("openid") or st.users.get(appid)
        if not openid:
            openid = st.users[appid] = "o" + secrets.token_urlsafe(20)
        code = _issue(st, appid, openid, scope, time.time())
        st.count(appid, "authorize")
    query = urlencode({"code": code, "state": request.args.get("state", "")})
    return redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}", 302)


@bp.get("/sns/oauth2/access_token")
def access_token() -> ResponseReturnValue:
    appid = request.args.get("appid", "")
    account = wechat_state().account(appid)
    if account is None:
        return err(40013, "invalid appid")
    if request.args.get("secret") != account.secret:
        return err(40125, "invalid appsecret")
    if request.args.get("grant_type") != "authorization_code":
        return err(40002, "invalid grant_type")
    st = state()
    with st.lock:
        code = st.codes.get(request.args.get("code", ""))
        if code is None or code["appid"] != appid or code["issued_at"] < time.time() - CODE_TTL:
            st.count(appid, "code_failures")
            return err(40029, "invalid code")
        if code["used"]:
            st.count(appid, "code_failures")
            return err(40163, "code been used")
        code["used"] = True
        st.count(appid, "code_exchanges")
    return jsonify(
        {
            "access_token": "SNSTOKEN_" + secrets.token_urlsafe(24),
            "expires_in": 7200,
            "refresh_token": "SNSREFRESH_" + secrets.token_urlsafe(24),
            "openid": code["openid"],
            "scope": code["scope"],
        }
    )


@bp.get("/cgi-bin/ticket/getticket")
def getticket() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    kind = request.args.get("type", "")
    if kind not in ("jsapi", "wx_card"):
        return err(40097, "invalid args")
    st = state()
    now = time.time()
    with st.lock:
        st.count(account.appid, "getticket")
        key = account.appid if kind == "jsapi" else f"{account.appid}:wx_card"
        ticket = st.tickets.get(key)
        if ticket is None or ticket["expires_at"] <= now:
            ticket = st.tickets[key] = {
                "ticket": secrets.token_urlsafe(64),
                "expires_at": now + TICKET_TTL,
            }
    return jsonify(
        {
            "errcode": 0,
            "errmsg": "ok",
            "ticket": ticket["ticket"],
            "expires_in": int(ticket["expires_at"] - now),
        }
    )


# -- admin -------------------------------------------------------------------------------------


def _known(appid: str) -> None:
    if wechat_state().account(appid) is None:
        abort(404, f"simulator knows no account {appid}")


@admin.post("/<appid>/oauth-user")
def set_oauth_user(appid: str) -> ResponseReturnValue:
    """The subscriber whom the next authorize redirects for (the person holding the phone)."""
    _known(appid)
    data = request.get_json(silent=True) or {}
    openid = str(data.get("openid") or "o" + secrets.token_urlsafe(20))
    with state().lock:
        state().users[appid] = openid
    return jsonify({"appid": appid, "openid": openid})


@admin.post("/<appid>/oauth-codes")
def issue_code(appid: str) -> ResponseReturnValue:
    """A code as the authorize redirect would carry it; ``age`` seconds old (to test expiry)."""
    _known(appid)
    data = request.get_json(silent=True) or {}
    st = state()
    with st.lock:
        openid = str(data.get("openid") or st.users.get(appid) or "o" + secrets.token_urlsafe(20))
        code = _issue(st, appid, openid, "snsapi_base", time.time() - float(data.get("age", 0)))
    return jsonify({"code": code, "openid": openid})


@admin.get("/<appid>/oauth")
def read_oauth(appid: str) -> ResponseReturnValue:
    _known(appid)
    st = state()
    with st.lock:
        ticket = st.tickets.get(appid)
        return jsonify(
            {
                "appid": appid,
                "user": st.users.get(appid),
                "stats": dict(st.stats.get(appid, {})),
                "jsapi_ticket": ticket["ticket"] if ticket else None,
                "jsapi_ticket_expires_at": ticket["expires_at"] if ticket else None,
            }
        )
