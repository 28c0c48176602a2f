"""The store in chat (inquiry keywords and menu keys, phone binding by SMS code), and the payment
events an order follows.

Registered above the account matrix's handlers (priority 200), so an inquiry keyword is answered
by the store even when a keyword rule would also match. Accounts without store settings are
untouched.
"""

from __future__ import annotations

import re

from accounts.subscribers import for_callback
from accounts.timeline import Entry
from payments.signals import IntentEvent, RefundEvent, intent_closed, intent_succeeded, refund_settled
from store import orders, redemption, services
from store.models import InquiryKind, Order, OrderStatus
from wechat_service.errors import ServiceError
from wechat_service.extensions import db, enqueue_after_commit
from wechat_service.money import yuan
from wechat_service.router import CallbackContext, Reply, router

CODE_RE = re.compile(r"^\d{6}$")
REDEEM_KEYWORD = "兑换"
MENU_KEYS = {f"INQUIRY_{kind.name.upper()}": kind for kind in InquiryKind}


def _dry(ctx: CallbackContext, action: str, reply: str) -> Reply:
    """The console's tester: say what would happen; the reply, which only the BOSS can word,
    is described (its type is the real one's)."""
    ctx.would(action)
    return Reply("text", {"content": reply})


def _inquire(ctx: CallbackContext, kind: InquiryKind, source: str) -> Reply | None:
    from flask import current_app

    if ctx.dry_run:
        return _dry(
            ctx,
            f"run the {kind.value} inquiry with the BOSS",
            f"(the {kind.value} inquiry's answer from the BOSS, or a prompt to bind a phone first)",
        )

    subscriber_id = for_callback(ctx).id
    result = services.inquire(
        ctx.account.id,
        subscriber_id,
        kind,
        source,
        timeout=current_app.config["INQUIRY_TIMEOUT"],
        on_slow=lambda: enqueue_after_commit(
            "high", "store.jobs.answer_inquiry", ctx.account.id, subscriber_id, kind.value
        ),
    )
    # Deferred: `success` now, the answer as a customer-service message when the BOSS replies.
    return Reply("text", {"content": result.text}) if result.text else None


@router.register("text", priority=200)
def on_text(ctx: CallbackContext) -> Reply | None:
    config = services.chat_config(ctx.account.id, ctx.account.config_version)
    if config is None:
        return None
    text = (ctx.message.get("Content") or "").strip()
    kind = config.keywords.get(text.casefold())
    if kind:
        return _inquire(ctx, InquiryKind(kind), "chat")
    if ctx.dry_run:
        return _dry_text(ctx, config, text)
    try:
        if text.startswith(REDEEM_KEYWORD):
            done = redemption.redeem(
                ctx.account.id, for_callback(ctx).id, text[len(REDEEM_KEYWORD) :], "chat"
            )
            return Reply(
                "text",
                {"content": f"兑换码有效：{done['product']}，正在充入 {done['phone']}，完成后通知您。"},
            )
        if text.startswith(config.bind_keyword):
            started = services.start_binding(
                ctx.account.id, for_callback(ctx).id, text[len(config.bind_keyword) :]
            )
            return Reply(
                "text",
                {"content": f"验证码已发送至 {started['phone']}，请在 5 分钟内回复 6 位验证码完成绑定。"},
            )
        if CODE_RE.match(text) and services.has_pending_binding(ctx.account.id, for_callback(ctx).id):
            binding = services.confirm_binding(ctx.account.id, for_callback(ctx).id, text)
            return Reply(
                "text",
                {
                    "content": f"绑定成功：{services.mask_phone(binding.phone)}。"
                    + "回复"
                    + "".join(f"「{w}」" for w in _examples(config))
                    + "即可查询。"
                },
            )
    except ServiceError as exc:
        return Reply("text", {"content": exc.message})
    return None


def _dry_text(ctx: CallbackContext, config: services.ChatConfig, text: str) -> Reply | None:
    """``on_text`` in the tester: the same branches, described. A 6-digit code is not one here:
    the tester is no subscriber, so it has no binding pending."""
    if text.startswith(REDEEM_KEYWORD):
        return _dry(ctx, "check the redeem code and start its top-up", "(the redeem code's outcome)")
    if text.startswith(config.bind_keyword):
        return _dry(ctx, "send an SMS code to the number through the BOSS", "(an SMS code sent, or why not)")
    return None


def _examples(config: services.ChatConfig) -> list[str]:
    """One keyword per inquiry kind the account answers, for the subscriber to try."""
    seen: dict[str, str] = {}
    for word, kind in config.keywords.items():
        seen.setdefault(kind, word)
    return list(seen.values())[:3]


@router.register("event", "click", priority=200)
def on_click(ctx: CallbackContext) -> Reply | None:
    kind = MENU_KEYS.get(ctx.message.get("EventKey") or "")
    if kind is None or services.chat_config(ctx.account.id, ctx.account.config_version) is None:
        return None
    return _inquire(ctx, kind, "menu")


# -- payment events: an order moves with its payment, inside payments' transaction ---------------


def on_intent_succeeded(sender: str, *, event: IntentEvent) -> None:
    """Paid: the order moves to paid and on to fulfilment; paid after it closed, it moves to
    refunding (payments is sending the money back)."""
    order_id = orders.order_id_of(event.purpose)
    if order_id is None:
        return
    if not event.late:
        orders.paid(order_id, event.provider_txn_id or "")  # conditional: once
    else:
        orders.transition(
            order_id, OrderStatus.closed, OrderStatus.refunding, {"reason": "paid after the order closed"}
        )


def on_intent_closed(sender: str, *, event: IntentEvent) -> None:
    """Closed unpaid (at the provider too): the order closes, its stock and coupon go back."""
    order_id = orders.order_id_of(event.purpose)
    order = db.session.get(Order, order_id) if order_id is not None else None
    if order is not None:
        orders.close(order)


def on_refund_settled(sender: str, *, event: RefundEvent) -> None:
    order_id = orders.order_id_of(event.purpose)
    if order_id is None:
        return
    if event.succeeded:
        orders.refund_settled(order_id, event.amount_fen, full=event.full)
    else:
        orders.refund_failed(order_id, event.amount_fen, event.why)


def connect_payment_events() -> None:
    intent_succeeded.connect(on_intent_succeeded)
    intent_closed.connect(on_intent_closed)
    refund_settled.connect(on_refund_settled)


# -- the subscriber's timeline (accounts.timeline): orders, inquiries, the bound phone -----------


def timeline_entries(account_id: int, subscriber_id: int, limit: int, unmasked: bool) -> list[Entry]:
    out = [
        Entry(
            o.created_at,
            "orders",
            f"order.{o.status.value}",
            f"{name} · {yuan(o.amount_fen)} 元",
            {"out_trade_no": o.out_trade_no, "status": o.status.value, "provider": o.provider},
        )
        for o, name in orders.of_subscriber(account_id, subscriber_id, limit)
    ]
    out += [
        Entry(i.at, "inquiries", f"inquiry.{i.kind.value}", f"{i.kind.value} ({i.outcome.value})",
              {"source": i.source, "outcome": i.outcome.value})
        for i in services.inquiries_of(account_id, subscriber_id, limit)
    ]  # fmt: skip
    binding = services.binding_of(account_id, subscriber_id)
    if binding is not None:
        phone = binding.phone if unmasked else services.mask_phone(binding.phone) or ""
        out.append(Entry(binding.bound_at, "phone", "phone.bound", phone, {"method": binding.method}))
    return sorted(out, key=lambda e: e.at, reverse=True)[:limit]
