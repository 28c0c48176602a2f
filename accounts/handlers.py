"""Callback handlers of the account matrix, registered into the shell's router.

They run inline in the callback's transaction: one upsert of the subscriber, cached rules, and a
ledger row written once the inbox row exists; no outside calls, so the passive reply goes back
well inside WeChat's 5 s.
"""

from __future__ import annotations

from accounts import replies, subscribers
from accounts.models import EventKind
from wechat_service.router import CallbackContext, Reply, router


def _welcome(ctx: CallbackContext) -> Reply | None:
    rule = replies.welcome_rule(ctx.account.id, ctx.account.config_version)
    return rule.reply if rule else None


@router.register("event", "subscribe", priority=100)
def on_subscribe(ctx: CallbackContext) -> Reply | None:
    key = ctx.message.get("EventKey") or ""
    # A plain follow carries an empty EventKey; a QR-code follow carries qrscene_<scene> + Ticket.
    scene = key[len("qrscene_") :] if key.startswith("qrscene_") else None
    channel_id = subscribers.channel_for_scene(ctx.account.id, scene)
    subscribers.follow(
        subscribers.for_callback(ctx),
        ctx.occurred_at,
        scene=scene,
        channel_id=channel_id,
        ctx=ctx,
        ticket=ctx.message.get("Ticket"),
    )
    return _welcome(ctx)


@router.register("event", "unsubscribe", priority=100)
def on_unsubscribe(ctx: CallbackContext) -> Reply | None:
    subscribers.unfollow(subscribers.for_callback(ctx), ctx.occurred_at, ctx=ctx)
    return None  # WeChat shows nothing to someone who has just left


@router.register("event", "scan", priority=100)
def on_scan(ctx: CallbackContext) -> Reply | None:
    scene = ctx.message.get("EventKey") or None  # SCAN carries the scene without the prefix
    channel_id = subscribers.channel_for_scene(ctx.account.id, scene)
    subscribers.record_event(
        subscribers.for_callback(ctx),
        EventKind.scan,
        ctx.occurred_at,
        ctx=ctx,
        channel_id=channel_id,
        detail={"scene": scene, "ticket": ctx.message.get("Ticket")},
    )
    return None


@router.register("event", "click", priority=100)
def on_click(ctx: CallbackContext) -> Reply | None:
    key = ctx.message.get("EventKey") or ""
    # A click whose key names a keyword rule answers like the keyword (menus reuse replies).
    rule = replies.match_text(ctx.account.id, ctx.account.config_version, key)
    rule = rule if rule and rule.kind.value == "keyword" and not ctx.reply else None
    subscribers.record_event(
        subscribers.for_callback(ctx),
        EventKind.click,
        ctx.occurred_at,
        ctx=ctx,
        detail={"key": key, **_answered(ctx, rule)},
    )
    return rule.reply if rule else None


@router.register("event", "view", priority=100)
def on_view(ctx: CallbackContext) -> Reply | None:
    subscribers.record_event(
        subscribers.for_callback(ctx),
        EventKind.view,
        ctx.occurred_at,
        ctx=ctx,
        detail={"url": ctx.message.get("EventKey") or ""},
    )
    return None


@router.register("event", "location", priority=100)
def on_location(ctx: CallbackContext) -> Reply | None:
    detail = {k: ctx.message.get(k) for k in ("Latitude", "Longitude", "Precision")}
    subscribers.record_event(
        subscribers.for_callback(ctx), EventKind.location, ctx.occurred_at, ctx=ctx, detail=detail
    )
    return None


@router.register("text", priority=100)
def on_text(ctx: CallbackContext) -> Reply | None:
    content = ctx.message.get("Content") or ""
    # A higher-priority handler (the store's inquiry, say) may have answered already.
    rule = None if ctx.reply else replies.match_text(ctx.account.id, ctx.account.config_version, content)
    if rule:
        ctx.notes["rule"] = rule.name
    if ctx.dry_run:  # the console's tester: no subscriber, no ledger row
        return rule.reply if rule else None
    subscribers.record_event(
        subscribers.for_callback(ctx),
        EventKind.message,
        ctx.occurred_at,
        ctx=ctx,
        detail={"type": "text", "content": content[:2000], **_answered(ctx, rule)},
    )
    return rule.reply if rule else None


def _answered(ctx: CallbackContext, rule: replies.CompiledRule | None) -> dict[str, str]:
    """What the subscriber was answered, kept in the ledger so their history reads as a chat."""
    reply, by = (rule.reply, f"rule {rule.name}") if rule else (ctx.reply, ctx.replied_by)
    if reply is None:
        return {}
    data = reply.data
    text = data.get("content") or (data.get("articles") or [{}])[0].get("title") or f"[{reply.type}]"
    return {"rule" if rule else "by": rule.name if rule else str(by), "reply": text[:300]}


def _media_message(ctx: CallbackContext) -> Reply | None:
    detail = {"type": ctx.msg_type}
    for field in ("MediaId", "PicUrl", "Format", "Recognition", "Label", "Title", "Url"):
        if ctx.message.get(field):
            detail[field] = ctx.message[field][:500]
    subscribers.record_event(
        subscribers.for_callback(ctx), EventKind.message, ctx.occurred_at, ctx=ctx, detail=detail
    )
    rule = replies.match_text(ctx.account.id, ctx.account.config_version, "")
    return rule.reply if rule else None  # only the default rule can match an empty text


for _type in ("image", "voice", "video", "shortvideo", "location", "link"):
    router.register(_type, priority=100)(_media_message)
