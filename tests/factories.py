"""One set of builders for what the store and payment tests stand on: an account (in the service
and the simulator), a subscriber with or without a bound phone, a top-up product, a merchant of
each provider, an order — and ``shop``, the usual composition of them.

Each builder goes through the product's own services (nothing is written behind their back) and
only flushes; ``shop`` commits, like the fixtures it replaces. Call them inside an app context
(any test using the ``app`` fixture is in one)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests import helpers

PROVIDERS = ("wechatpay_v3", "wechatpay_v2", "alipay")


def account(simulator: str, mode: str = "plain", **overrides: Any) -> tuple[Any, dict[str, Any], Any]:
    """An account added through the service and registered with the simulator (its callback URL
    on the in-process service); returns (account, fields, target). ``create_account`` calls this."""
    from accounts import services
    from wechat_service.extensions import db

    fields = helpers.account_fields(mode, **overrides)
    org = fields.pop("org_unit_code", None)
    added = services.add_account(**fields, org_unit_code=org)
    db.session.commit()
    callback = f"http://service.test/wechat/{fields['appid']}/callback"
    helpers.register_with_simulator(simulator, fields, callback)
    return added, fields, helpers.target_for(fields, callback)


def subscriber(account_id: int, openid: str, phone: str | None = None) -> Any:
    """The account's subscriber ``openid`` (a SubscriberRef), with ``phone`` bound by SMS if given."""
    from accounts.subscribers import touch
    from store import services as store_services

    sub = touch(account_id, openid, None)
    if phone is not None:
        store_services.bind_phone(account_id, sub.id, phone, method="sms")
    return sub


def topup(
    account_id: int, code: str, price_fen: int, face_value_fen: int, *, name: str | None = None, **fields: Any
) -> Any:
    """A phone top-up product, named after its face value ("30 元话费") unless ``name`` says."""
    from store import catalogue

    return catalogue.add_product(
        account_id=account_id,
        code=code,
        name=name or f"{face_value_fen // 100} 元话费",
        kind="topup",
        price_fen=price_fen,
        face_value_fen=face_value_fen,
        **fields,
    )


def merchant(
    simulator: str, account_id: int, provider: str = "wechatpay_v3", **options: Any
) -> dict[str, Any]:
    """A merchant of ``provider`` for the account, known to the simulator. The keys are those of
    tests.helpers' register_* functions: WeChat Pay v3 ``merchant``, ``public_key``, ``mchid``
    (option ``refund_status``); v2 ``merchant``, ``mchid``, ``api_key`` (options ``sign_type``,
    ``refund_status``); Alipay ``alipay_merchant``, ``alipay_app_id``, ``seller_id``."""
    if provider == "wechatpay_v3":
        return helpers.register_merchant(simulator, account_id, **options)
    if provider == "wechatpay_v2":
        return helpers.register_wechatpay_v2(simulator, account_id, **options)
    if provider == "alipay":
        return helpers.register_alipay(simulator, account_id, **options)
    raise ValueError(f"unknown provider {provider!r}")


def order(sub: Any, product: Any, key: str, provider: str = "wechatpay_v3", **options: Any) -> Any:
    """The subscriber's order of ``product`` under the client's idempotency ``key`` (through
    store.orders.create_order: stock, limits and coupons apply; ``coupon_code`` is an option)."""
    from store import orders

    return orders.create_order(sub.account_id, sub.id, product.id, key, provider, **options)


def shop(
    simulator: str,
    *,
    kind: str | None = None,
    pay: Iterable[str] = ("wechatpay_v3",),
    product: dict[str, Any],
    openid: str | None = None,
    phone: str | None = None,
    **merchant_options: Any,
) -> dict[str, Any]:
    """An account (of ``kind`` if given, else the service's default) with a merchant for each
    provider in ``pay`` (``merchant_options`` go to each of them), one top-up ``product`` (the
    arguments of ``topup``) and, given an ``openid``, a subscriber with ``phone`` bound; committed.
    Returns ``account``, ``fields``, ``target``, ``product``, ``sub`` (if any) and the merchants'
    keys (see ``merchant``)."""
    from wechat_service.extensions import db

    acc, fields, target = account(simulator, **({"kind": kind} if kind else {}))
    built: dict[str, Any] = {"account": acc, "fields": fields, "target": target}
    for provider in pay:
        built.update(merchant(simulator, acc.id, provider, **merchant_options))
    built["product"] = topup(acc.id, **product)
    if openid is not None:
        built["sub"] = subscriber(acc.id, openid, phone)
    db.session.commit()
    return built
