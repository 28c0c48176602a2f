"""The simulator's admin API under /_sim/: register, drive, inject faults, read what it received."""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue

from simulator.driver import deliver, event_fields, message_xml
from simulator.state import SimAccount
from simulator.wechat import MESSAGING_DEFAULTS, messaging, state

bp = Blueprint("sim_admin", __name__, url_prefix="/_sim")

ACCOUNT_FIELDS = ("secret", "token", "aes_key", "mode", "callback_url", "original_id", "kind")


def _account(appid: str) -> SimAccount:
    account = state().account(appid)
    if account is None:
        abort(404, f"simulator knows no account {appid}")
    return account


def _json() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "JSON object expected")
    return data


@bp.post("/reset")
def reset() -> ResponseReturnValue:
    state().reset()
    return jsonify({"ok": True})


@bp.post("/accounts")
def register_account() -> ResponseReturnValue:
    data = _json()
    if not data.get("appid") or not data.get("secret"):
        abort(400, "appid and secret are required")
    st = state()
    with st.lock:
        account = SimAccount(appid=data["appid"], **{k: data[k] for k in ACCOUNT_FIELDS if k in data})
        st.accounts[account.appid] = account
    return jsonify({"appid": account.appid}), 201


@bp.patch("/accounts/<appid>")
def update_account(appid: str) -> ResponseReturnValue:
    account = _account(appid)
    data = _json()
    with state().lock:
        for key in ACCOUNT_FIELDS:
            if key in data:
                setattr(account, key, data[key])
    return jsonify({"appid": appid})


@bp.post("/accounts/<appid>/drive")
def drive(appid: str) -> ResponseReturnValue:
    """Make a subscriber act: follow, unfollow, text, click, view, scan, location, image.

    ``repeat`` sends the identical message that many times (WeChat's re-sends, or a replay);
    ``timeout`` is how long WeChat waits for an answer before it re-sends (5 s).
    """
    account = _account(appid)
    data = _json()
    action = data.get("action", "")
    openid = data.get("openid") or "o" + secrets.token_urlsafe(20)
    st = state()
    msgid = st.msgid()
    try:
        fields = event_fields(action, data, msgid)
    except (KeyError, ValueError) as exc:
        abort(400, f"bad drive request: {exc}")
    with st.lock:
        now = int(time.time())
        if action == "follow":
            entry = account.followers.setdefault(openid, {})
            entry.update(
                {
                    "subscribe_time": now,
                    "unionid": data.get("unionid"),
                    "subscribe_scene": "ADD_SCENE_QR_CODE" if data.get("scene") else "ADD_SCENE_OTHERS",
                    "qr_scene_str": data.get("scene") or "",
                }
            )
            at = int(fields.get("CreateTime") or now)  # drive's create_time backdates it
            account.follow_log.append(
                {"at": at, "openid": openid, "kind": "follow", "scene": data.get("scene")}
            )
        elif action == "unfollow":
            account.followers.pop(openid, None)
            at = int(fields.get("CreateTime") or now)
            account.follow_log.append({"at": at, "openid": openid, "kind": "unfollow"})
    target = account.target()
    xml = message_xml(target, openid, fields)
    results = []
    for _ in range(max(1, min(int(data.get("repeat", 1)), 10))):
        delivery = deliver(target, xml, openid, timeout=float(data.get("timeout", 5.0)))
        with st.lock:
            account.stats["callbacks_sent"] += 1
            account.stats["callback_attempts"] += delivery.attempts
        results.append(delivery.as_dict())
    return jsonify(
        {
            "openid": openid,
            "msgid": msgid if action == "text" else None,
            "message": fields,
            **results[0],
            "deliveries": results,
        }
    )


@bp.post("/accounts/<appid>/faults")
def add_fault(appid: str) -> ResponseReturnValue:
    """kind: busy | quota | minute_quota | latency (ms) | errcode (errcode); count: how many calls."""
    account = _account(appid)
    data = _json()
    if data.get("kind") not in ("busy", "quota", "minute_quota", "latency", "errcode"):
        abort(400, "unknown fault kind")
    with state().lock:
        account.faults.append({**data, "remaining": int(data.get("count", 1))})
    return jsonify({"faults": account.faults})


@bp.delete("/accounts/<appid>/faults")
def clear_faults(appid: str) -> ResponseReturnValue:
    account = _account(appid)
    with state().lock:
        account.faults.clear()
    return jsonify({"faults": []})


@bp.post("/accounts/<appid>/invalidate-token")
def invalidate_token(appid: str) -> ResponseReturnValue:
    """The current access token stops working now (as if another party refreshed it)."""
    account = _account(appid)
    with state().lock:
        account.access_expires = 0.0
        account.previous_token, account.previous_valid_until = None, 0.0
    return jsonify({"ok": True})


@bp.post("/accounts/<appid>/followers")
def seed_followers(appid: str) -> ResponseReturnValue:
    """Existing followers (before the service was connected), for follower sync."""
    account = _account(appid)
    data = _json()
    count = int(data.get("count", 0))
    prefix = data.get("prefix", "oSEED")
    tags = [int(t) for t in data.get("tagid_list", [])]
    with state().lock:
        for tag in tags:
            account.tags.setdefault(tag, {"name": f"tag{tag}"})
        for i in range(count):
            openid = f"{prefix}{i:08d}"
            account.follow_log.append({"at": int(time.time()) - 86400 - i, "openid": openid, "kind": "seed"})
            account.followers[openid] = {
                "subscribe_time": int(time.time()) - 86400 - i,
                "unionid": f"u{prefix}{i:08d}" if data.get("with_unionid", True) else None,
                "tagid_list": tags if i % 2 == 0 else [],
            }
    return jsonify({"followers": len(account.followers)})


@bp.post("/accounts/<appid>/templates")
def seed_templates(appid: str) -> ResponseReturnValue:
    account = _account(appid)
    data = _json()
    with state().lock:
        account.templates = list(data.get("templates") or [])
    return jsonify({"templates": len(account.templates)})


@bp.post("/accounts/<appid>/js-codes")
def issue_js_code(appid: str) -> ResponseReturnValue:
    """What wx.login gives the mini-program: a single-use code living about 5 minutes."""
    account = _account(appid)
    data = request.get_json(silent=True) or {}
    code = secrets.token_urlsafe(24)
    openid = data.get("openid") or "o" + secrets.token_urlsafe(20)
    with state().lock:
        account.js_codes[code] = {
            "openid": openid,
            "unionid": data.get("unionid"),
            "used": False,
            "session_key": secrets.token_urlsafe(16),
            "issued_at": time.time(),
        }
    return jsonify({"code": code, "openid": openid})


@bp.post("/accounts/<appid>/phone-codes")
def issue_phone_code(appid: str) -> ResponseReturnValue:
    """What a mini-program's getPhoneNumber button gives after the user agrees: a single-use code
    (5 minutes) standing for ``phone``. ``watermark_appid`` forges the answer's watermark."""
    account = _account(appid)
    data = _json()
    if not data.get("phone"):
        abort(400, "phone is required")
    code = str(data.get("code") or secrets.token_urlsafe(24))
    with state().lock:
        account.phone_codes[code] = {
            "phone": str(data["phone"]),
            "country_code": str(data.get("country_code") or "86"),
            "watermark_appid": data.get("watermark_appid") or appid,
            "used": False,
            "issued_at": time.time(),
        }
    return jsonify({"code": code}), 201


@bp.get("/accounts/<appid>")
def read_account(appid: str) -> ResponseReturnValue:
    account = _account(appid)
    with state().lock:
        return jsonify(
            {
                "appid": appid,
                "mode": account.mode,
                "stats": dict(account.stats),
                "followers": len(account.followers),
                "menu": account.menu,
                "menu_creates": len(account.menu_history),
                "qrcodes": list(account.qrcodes.values()),
                "custom_messages": list(account.custom_messages),
                "template_messages": list(account.template_messages),
                "faults": list(account.faults),
                "tags": account.tags,
            }
        )


# -- template/subscribe messaging: quotas, faults, report mix (see simulator/wechat.py) ----------


@bp.put("/accounts/<appid>/messaging")
def set_messaging(appid: str) -> ResponseReturnValue:
    """Settings of template sends: minute_quota, daily_quota, busy_rate, timeout_after_accept,
    timeout_ms, latency_ms, reports (on|off), report_delay_ms, report_mix, record."""
    _account(appid)
    data = _json()
    unknown = set(data) - set(MESSAGING_DEFAULTS) - {"reset_counters"}
    if unknown:
        abort(400, f"unknown settings: {sorted(unknown)}")
    cfg = messaging(appid)
    with state().lock:
        for key, value in data.items():
            if key in MESSAGING_DEFAULTS:
                cfg[key] = value
        if data.get("reset_counters"):
            cfg["minute"], cfg["day"] = [0, 0], ["", 0]
    return jsonify({k: cfg[k] for k in MESSAGING_DEFAULTS})


@bp.get("/accounts/<appid>/messaging")
def read_messaging(appid: str) -> ResponseReturnValue:
    _account(appid)
    cfg = messaging(appid)
    with state().lock:
        return jsonify(
            {
                **{k: cfg[k] for k in MESSAGING_DEFAULTS},
                "accepted": cfg["accepted"],
                "sent_today": cfg["day"][1],
                "reports_sent": dict(cfg["reports_sent"]),
                "subscribe_messages": list(cfg["subscribe_messages"]),
                "authorisations": dict(cfg["authorisations"]),
            }
        )


@bp.post("/accounts/<appid>/subscribe-popup")
def subscribe_popup(appid: str) -> ResponseReturnValue:
    """The mini-program user answers the subscribe popup: one more one-time authorisation per
    accepted template; the event goes to the callback URL as XML (one <List> per template)."""
    from xml.sax.saxutils import escape

    account = _account(appid)
    data = _json()
    openid = data.get("openid") or "o" + secrets.token_urlsafe(20)
    status = data.get("status", "accept")
    template_ids = [str(t) for t in data.get("template_ids") or []]
    cfg = messaging(appid)
    with state().lock:
        for tid in template_ids:
            if status == "accept":
                key = f"{openid}|{tid}"
                cfg["authorisations"][key] = cfg["authorisations"].get(key, 0) + 1
    items = "".join(
        f"<List><TemplateId><![CDATA[{escape(t)}]]></TemplateId>"
        f"<SubscribeStatusString><![CDATA[{escape(status)}]]></SubscribeStatusString>"
        "<PopupScene>0</PopupScene></List>"
        for t in template_ids
    )
    xml = (
        f"<xml><ToUserName><![CDATA[{account.original_id}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event>"
        f"<SubscribeMsgPopupEvent>{items}</SubscribeMsgPopupEvent></xml>"
    )
    delivery = deliver(account.target(), xml, openid)
    return jsonify({"openid": openid, **delivery.as_dict()})
