"""The subscriber driver: builds WeChat's callbacks, signs (and encrypts) them per mode, sends
them to the service, re-sends like WeChat when no answer comes within 5 s, and verifies and
decrypts the reply.

Used by the simulator's admin API, and directly by tests that need to forge requests.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import requests
from defusedxml.ElementTree import fromstring

from wechat_service import wxcrypto

WECHAT_TIMEOUT = 5.0
WECHAT_ATTEMPTS = 3  # the first delivery and its re-sends, in all


@dataclass
class Target:
    appid: str
    token: str
    aes_key: str
    mode: str  # plain, compatible, safe
    callback_url: str
    original_id: str


@dataclass
class Delivery:
    status: int | None
    body: str
    reply: dict[str, str] | None
    attempts: int
    elapsed: float
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "body": self.body,
            "reply": self.reply,
            "attempts": self.attempts,
            "elapsed": round(self.elapsed, 4),
            "errors": self.errors,
        }


def message_xml(target: Target, openid: str, fields: dict[str, Any]) -> str:
    parts = [
        f"<ToUserName><![CDATA[{target.original_id}]]></ToUserName>",
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>",
    ]
    for key, value in fields.items():
        if isinstance(value, int):
            parts.append(f"<{key}>{value}</{key}>")
        else:
            parts.append(f"<{key}><![CDATA[{value}]]></{key}>")
    return "<xml>" + "".join(parts) + "</xml>"


def event_fields(action: str, params: dict[str, Any], msgid: int) -> dict[str, Any]:
    now = int(params.get("create_time") or time.time())
    if action == "follow":
        scene = params.get("scene")
        out: dict[str, Any] = {
            "CreateTime": now,
            "MsgType": "event",
            "Event": "subscribe",
            "EventKey": f"qrscene_{scene}" if scene else "",
        }
        if scene:
            out["Ticket"] = params.get("ticket") or f"TICKET_{scene}"
        return out
    if action == "unfollow":
        return {"CreateTime": now, "MsgType": "event", "Event": "unsubscribe", "EventKey": ""}
    if action == "scan":
        return {
            "CreateTime": now,
            "MsgType": "event",
            "Event": "SCAN",
            "EventKey": str(params["scene"]),
            "Ticket": params.get("ticket") or f"TICKET_{params['scene']}",
        }
    if action == "click":
        return {"CreateTime": now, "MsgType": "event", "Event": "CLICK", "EventKey": str(params["key"])}
    if action == "view":
        return {"CreateTime": now, "MsgType": "event", "Event": "VIEW", "EventKey": str(params["url"])}
    if action == "location":
        return {
            "CreateTime": now,
            "MsgType": "event",
            "Event": "LOCATION",
            "Latitude": str(params.get("latitude", "23.137466")),
            "Longitude": str(params.get("longitude", "113.352425")),
            "Precision": "119.385040",
        }
    if action == "text":
        return {"CreateTime": now, "MsgType": "text", "Content": str(params["content"]), "MsgId": msgid}
    if action == "image":
        return {
            "CreateTime": now,
            "MsgType": "image",
            "PicUrl": "http://example.invalid/p.jpg",
            "MediaId": params.get("media_id", "MEDIA_1"),
            "MsgId": msgid,
        }
    if action == "template_finish":
        return {
            "CreateTime": now,
            "MsgType": "event",
            "Event": "TEMPLATESENDJOBFINISH",
            "MsgID": int(params["msgid"]),
            "Status": params.get("status", "success"),
        }
    raise ValueError(f"unknown action {action!r}")


def signed_request(
    target: Target, xml: str, *, timestamp: int | None = None, nonce: str | None = None, openid: str = ""
) -> tuple[dict[str, str], bytes]:
    """Query args and body as WeChat sends them in the target's mode."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = nonce or str(secrets.randbelow(10**10))
    args = {"signature": wxcrypto.signature(target.token, ts, nonce), "timestamp": ts, "nonce": nonce}
    if openid:
        args["openid"] = openid
    if target.mode == "plain":
        return args, xml.encode()
    enc = wxcrypto.encrypt(xml, target.aes_key, target.appid)
    args["encrypt_type"] = "aes"
    args["msg_signature"] = wxcrypto.signature(target.token, ts, nonce, enc)
    if target.mode == "compatible":
        body = xml.replace("</xml>", f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>")
    else:
        body = (
            f"<xml><ToUserName><![CDATA[{target.original_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
        )
    return args, body.encode()


def open_reply(target: Target, body: str) -> dict[str, str] | None:
    """Verify and decrypt the service's answer; None for `success` or an empty body."""
    if not body or body == "success":
        return None
    root = fromstring(body.encode(), forbid_dtd=True)
    fields = {child.tag: child.text or "" for child in root}
    if "Encrypt" in fields:
        wxcrypto.verify_signature(
            (target.token, fields.get("TimeStamp", ""), fields.get("Nonce", ""), fields["Encrypt"]),
            fields.get("MsgSignature"),
        )
        inner = wxcrypto.decrypt(fields["Encrypt"], [target.aes_key], target.appid)
        root = fromstring(inner.encode(), forbid_dtd=True)
        fields = {child.tag: child.text or "" for child in root}
        fields["_encrypted"] = "1"
    if "Articles" in fields:
        fields["ArticleTitles"] = "|".join(escape(item.findtext("Title") or "") for item in root.iter("item"))
    return fields


def deliver(
    target: Target,
    xml: str,
    openid: str,
    *,
    timeout: float = WECHAT_TIMEOUT,
    attempts: int = WECHAT_ATTEMPTS,
    session: requests.Session | None = None,
) -> Delivery:
    """POST like WeChat: no answer within ``timeout`` → drop the connection and re-send."""
    http = session or requests
    started = time.monotonic()
    errors: list[str] = []
    for attempt in range(1, attempts + 1):
        args, body = signed_request(target, xml, openid=openid)
        try:
            resp = http.post(
                target.callback_url,
                params=args,
                data=body,
                timeout=timeout,
                headers={"Content-Type": "text/xml"},
            )
        except requests.Timeout:
            errors.append(f"attempt {attempt}: no answer within {timeout}s")
            continue
        except requests.RequestException as exc:
            errors.append(f"attempt {attempt}: {type(exc).__name__}")
            continue
        reply = None
        if resp.status_code == 200:
            try:
                reply = open_reply(target, resp.text)
            except Exception as exc:  # noqa: BLE001 - a broken reply is what the subscriber would see
                errors.append(f"bad reply: {type(exc).__name__}: {exc}")
        return Delivery(resp.status_code, resp.text, reply, attempt, time.monotonic() - started, errors)
    return Delivery(None, "", None, attempts, time.monotonic() - started, errors)
