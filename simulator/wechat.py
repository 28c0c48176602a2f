"""WeChat's server API as the service sees it: same paths, same JSON, same errcodes."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from simulator.state import SimAccount, SimState

bp = Blueprint("sim_wechat", __name__, url_prefix="/wechat")


def state() -> SimState:
    return current_app.extensions["sim_state"]


def err(code: int, msg: str) -> ResponseReturnValue:
    return jsonify({"errcode": code, "errmsg": msg})  # WeChat answers errors with HTTP 200


def body() -> dict[str, Any]:
    try:
        return json.loads(request.get_data() or b"{}")
    except ValueError:
        return {}


def authed() -> tuple[SimAccount | None, ResponseReturnValue | None]:
    """Find the account by access token, apply injected faults, count the call."""
    token = request.args.get("access_token")
    st = state()
    with st.lock:
        account = next(
            (a for a in st.accounts.values() if token and token in (a.access_token, a.previous_token)), None
        )
        if account is None:
            return None, err(
                40001 if token else 41001, "invalid credential, access_token is invalid or not latest"
            )
        code = account.token_state(token)
        if code:
            return None, err(code, "access_token expired" if code == 42001 else "invalid credential")
        account.stats["api_calls"] += 1
        fault = account.take_fault()
    if fault:
        kind = fault["kind"]
        if kind == "latency":
            time.sleep(fault.get("ms", 1000) / 1000)
        elif kind == "busy":
            return None, err(-1, "system error")
        elif kind == "quota":
            return None, err(45009, "reach max api daily quota limit")
        elif kind == "minute_quota":
            return None, err(45011, "api minute-quota reach limit")
        elif kind == "errcode":
            return None, err(int(fault["errcode"]), fault.get("errmsg", "injected"))
    return account, None


@bp.get("/cgi-bin/token")
def token() -> ResponseReturnValue:
    st = state()
    with st.lock:
        account = st.account(request.args.get("appid", ""))
        if account is None:
            return err(40013, "invalid appid")
        if request.args.get("secret") != account.secret:
            return err(40125, "invalid appsecret")
        account.stats["token"] += 1
        tok = account.issue_token(keep_previous=True)
    return jsonify({"access_token": tok, "expires_in": 7200})


@bp.post("/cgi-bin/stable_token")
def stable_token() -> ResponseReturnValue:
    data = body()
    st = state()
    with st.lock:
        account = st.account(str(data.get("appid", "")))
        if account is None:
            return err(40013, "invalid appid")
        if data.get("secret") != account.secret:
            return err(40125, "invalid appsecret")
        account.stats["stable_token"] += 1
        now = time.time()
        if not data.get("force_refresh") and account.access_token and account.access_expires > now:
            return jsonify(
                {"access_token": account.access_token, "expires_in": int(account.access_expires - now)}
            )
        tok = account.issue_token(keep_previous=bool(data.get("force_refresh")))
    return jsonify({"access_token": tok, "expires_in": 7200})


@bp.get("/cgi-bin/user/get")
def user_get() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    openids = list(account.followers)
    start = 0
    nxt = request.args.get("next_openid")
    if nxt:
        try:
            start = openids.index(nxt) + 1
        except ValueError:
            return err(40003, "invalid openid")
    page = openids[start : start + 10000]
    return jsonify(
        {
            "total": len(openids),
            "count": len(page),
            "data": {"openid": page},
            "next_openid": page[-1] if page else "",
        }
    )


def _user_info(account: SimAccount, openid: str) -> dict[str, Any]:
    f = account.followers.get(openid)
    if f is None:
        return {"subscribe": 0, "openid": openid}
    info = {
        "subscribe": 1,
        "openid": openid,
        "language": "zh_CN",
        "subscribe_time": f["subscribe_time"],
        "remark": "",
        "groupid": 0,
        "tagid_list": f.get("tagid_list", []),
        "subscribe_scene": f.get("subscribe_scene", "ADD_SCENE_OTHERS"),
        "qr_scene": 0,
        "qr_scene_str": f.get("qr_scene_str", ""),
    }
    if f.get("unionid"):
        info["unionid"] = f["unionid"]
    return info


@bp.get("/cgi-bin/user/info")
def user_info() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    return jsonify(_user_info(account, request.args.get("openid", "")))


@bp.post("/cgi-bin/user/info/batchget")
def user_batchget() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    users = body().get("user_list") or []
    if len(users) > 100:
        return err(45035, "user_list size exceeds 100")
    return jsonify({"user_info_list": [_user_info(account, u.get("openid", "")) for u in users]})


@bp.get("/cgi-bin/tags/get")
def tags_get() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    return jsonify(
        {
            "tags": [
                {
                    "id": i,
                    "name": t["name"],
                    "count": sum(1 for f in account.followers.values() if i in f.get("tagid_list", [])),
                }
                for i, t in account.tags.items()
            ]
        }
    )


@bp.post("/cgi-bin/tags/create")
def tags_create() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    name = (body().get("tag") or {}).get("name", "")
    with state().lock:
        tag_id = max(account.tags, default=99) + 1
        account.tags[tag_id] = {"name": name}
    return jsonify({"tag": {"id": tag_id, "name": name}})


@bp.post("/cgi-bin/tags/members/batchtagging")
def tags_batchtagging() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    data = body()
    openids = data.get("openid_list") or []
    if len(openids) > 50:
        return err(40032, "invalid openid list size, at most 50")
    tag_id = int(data.get("tagid", 0))
    if tag_id not in account.tags:
        return err(45159, "invalid tag id")
    with state().lock:
        for o in openids:
            tags = account.followers.setdefault(o, {"subscribe_time": int(time.time())}).setdefault(
                "tagid_list", []
            )
            if tag_id not in tags:
                tags.append(tag_id)
    return err(0, "ok")


@bp.post("/cgi-bin/menu/create")
def menu_create() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    data = body()
    buttons = data.get("button")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        return err(40017, "invalid button size")
    for b in buttons:
        if len(b.get("sub_button") or []) > 5:
            return err(40023, "invalid sub button size")
    with state().lock:
        account.menu = data
        account.menu_history.append({"at": time.time(), "menu": data})
    return err(0, "ok")


@bp.get("/cgi-bin/menu/get")
def menu_get() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    if account.menu is None:
        return err(46003, "menu no exist")
    return jsonify({"menu": account.menu})


@bp.post("/cgi-bin/qrcode/create")
def qrcode_create() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    data = body()
    scene = (data.get("action_info") or {}).get("scene") or {}
    scene_value = scene.get("scene_str") or scene.get("scene_id")
    if (
        data.get("action_name") not in ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE")
        or not scene_value
    ):
        return err(40053, "invalid action info")
    ticket = "gQ" + secrets.token_urlsafe(30)
    out = {"ticket": ticket, "url": f"http://weixin.qq.com/q/{secrets.token_urlsafe(12)}"}
    if "LIMIT" not in data["action_name"]:
        out["expire_seconds"] = int(data.get("expire_seconds") or 60)
    with state().lock:
        account.qrcodes[ticket] = {"scene": str(scene_value), **out}
    return jsonify(out)


@bp.post("/cgi-bin/message/custom/send")
def custom_send() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    data = body()
    if data.get("touser") not in account.followers:
        return err(43004, "require subscribe")
    with state().lock:
        account.custom_messages.append({"at": time.time(), **data})
    return err(0, "ok")


@bp.get("/cgi-bin/template/get_all_private_template")
def templates() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    return jsonify({"template_list": account.templates})


# -- template and subscribe messages: quotas, injected failures, delivery-report mix -------------
# Per-account settings live beside SimAccount (admin: PUT /_sim/accounts/<appid>/messaging).
MESSAGING_DEFAULTS: dict[str, Any] = {
    "minute_quota": 0,  # sends per minute before 45011 (0: unlimited)
    "daily_quota": 0,  # sends per day before 45009 (0: unlimited)
    "busy_rate": 0.0,  # share of sends answered -1
    "timeout_after_accept": 0,  # next N accepted sends answer only after timeout_ms
    "timeout_ms": 3000,
    "latency_ms": 0,  # every send is slowed this much
    "reports": "on",  # on: TEMPLATESENDJOBFINISH posted back; off: not (a benchmark posts its own)
    "report_delay_ms": 0,
    "report_mix": {"success": 1},  # status → weight
    "record": True,  # keep each message for GET /_sim/accounts/<appid>; off for huge benchmarks
}


def messaging(appid: str) -> dict[str, Any]:
    st = state()
    with st.lock:
        store = current_app.extensions.setdefault("sim_messaging", {})
        if appid not in store:
            store[appid] = {
                **MESSAGING_DEFAULTS,
                "report_mix": dict(MESSAGING_DEFAULTS["report_mix"]),
                "minute": [0, 0],  # [minute number, sends in it]
                "day": ["", 0],  # [date, sends on it]
                "accepted": 0,
                "reports_sent": {},
                "authorisations": {},  # (openid, template_id) → remaining
                "subscribe_messages": [],
            }
        return store[appid]


def _quota(cfg: dict[str, Any]) -> ResponseReturnValue | None:
    """Count the send against the account's minute and day; the errcode when over (under the lock)."""
    now = time.time()
    minute, day = int(now // 60), time.strftime("%Y%m%d", time.gmtime(now + 8 * 3600))
    if cfg["minute"][0] != minute:
        cfg["minute"] = [minute, 0]
    if cfg["day"][0] != day:
        cfg["day"] = [day, 0]
    if cfg["daily_quota"] and cfg["day"][1] >= cfg["daily_quota"]:
        return err(45009, "reach max api daily quota limit")
    if cfg["minute_quota"] and cfg["minute"][1] >= cfg["minute_quota"]:
        return err(45011, "api minute-quota reach limit")
    if cfg["busy_rate"] and random.random() < cfg["busy_rate"]:
        return err(-1, "system error")
    cfg["minute"][1] += 1
    cfg["day"][1] += 1
    return None


def _report_status(cfg: dict[str, Any]) -> str:
    mix = cfg["report_mix"] or {"success": 1}
    return random.choices(list(mix), weights=[float(w) for w in mix.values()])[0]


def _after_accept(cfg: dict[str, Any]) -> None:
    with state().lock:
        slow = cfg["timeout_after_accept"] > 0
        if slow:
            cfg["timeout_after_accept"] -= 1
    if slow:
        time.sleep(cfg["timeout_ms"] / 1000)  # accepted and recorded, answered too late


@bp.post("/cgi-bin/message/template/send")
def template_send() -> ResponseReturnValue:
    account, fail = authed()
    if fail:
        return fail
    data = body()
    touser = data.get("touser", "")
    cfg = messaging(account.appid)
    if cfg["latency_ms"]:
        time.sleep(cfg["latency_ms"] / 1000)
    if not any(t["template_id"] == data.get("template_id") for t in account.templates):
        return err(40037, "invalid template_id")
    if touser not in account.followers:
        return err(43004, "require subscribe")
    st = state()
    with st.lock:
        over = _quota(cfg)
        if over is not None:
            return over
        msgid = st.msgid()
        cfg["accepted"] += 1
        if cfg["record"]:
            account.template_messages.append({"at": time.time(), "msgid": msgid, **data})
        status = _report_status(cfg)
        cfg["reports_sent"][status] = cfg["reports_sent"].get(status, 0) + 1
    _after_accept(cfg)
    # WeChat reports delivery later, as a TEMPLATESENDJOBFINISH callback.
    from simulator.driver import deliver, event_fields, message_xml

    target = account.target()
    if target.callback_url and cfg["reports"] == "on":
        fields = event_fields("template_finish", {"msgid": msgid, "status": status}, msgid)
        xml = message_xml(target, touser, fields)

        def later() -> None:
            time.sleep(cfg["report_delay_ms"] / 1000)
            deliver(target, xml, touser)

        threading.Thread(target=later, daemon=True).start()
    return jsonify({"errcode": 0, "errmsg": "ok", "msgid": msgid})


@bp.post("/cgi-bin/message/subscribe/send")
def subscribe_send() -> ResponseReturnValue:
    """A mini-program subscribe message: needs one of the user's one-time authorisations (43101)."""
    account, fail = authed()
    if fail:
        return fail
    data = body()
    cfg = messaging(account.appid)
    key = f"{data.get('touser', '')}|{data.get('template_id', '')}"
    st = state()
    with st.lock:
        if cfg["authorisations"].get(key, 0) <= 0:
            return err(43101, "user refuse to accept the msg")
        over = _quota(cfg)
        if over is not None:
            return over
        cfg["authorisations"][key] -= 1
        msgid = st.msgid()
        cfg["accepted"] += 1
        cfg["subscribe_messages"].append({"at": time.time(), "msgid": msgid, **data})
    _after_accept(cfg)
    return jsonify({"errcode": 0, "errmsg": "ok", "msgid": msgid})


@bp.get("/sns/jscode2session")
def jscode2session() -> ResponseReturnValue:
    st = state()
    with st.lock:
        account = st.account(request.args.get("appid", ""))
        if account is None:
            return err(40013, "invalid appid")
        if request.args.get("secret") != account.secret:
            return err(40125, "invalid appsecret")
        code = account.js_codes.get(request.args.get("js_code", ""))
        if code is None or code["issued_at"] < time.time() - 300:
            return err(40029, "invalid code")
        if code["used"]:
            return err(40163, "code been used")
        code["used"] = True
    out = {"openid": code["openid"], "session_key": code["session_key"]}
    if code.get("unionid"):
        out["unionid"] = code["unionid"]
    return jsonify(out)


PHONE_CODE_TTL = 300


@bp.post("/wxa/business/getuserphonenumber")
def getuserphonenumber() -> ResponseReturnValue:
    """A mini-program's getPhoneNumber code → the user's number; single use, 5 minutes."""
    account, fail = authed()
    if fail:
        return fail
    with state().lock:
        entry = account.phone_codes.get(str(body().get("code") or ""))
        # WeChat answers 40029 for an unknown, expired or already used code alike.
        if entry is None or entry["used"] or entry["issued_at"] < time.time() - PHONE_CODE_TTL:
            return err(40029, "invalid code")
        entry["used"] = True
    country, pure = entry["country_code"], entry["phone"]
    return jsonify(
        {
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": pure if country == "86" else f"+{country}{pure}",
                "purePhoneNumber": pure,
                "countryCode": country,
                "watermark": {"timestamp": int(time.time()), "appid": entry["watermark_appid"]},
            },
        }
    )
