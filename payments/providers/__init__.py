"""The payment providers behind one interface (``base.PaymentProvider``), chosen through one
registry: what is known about a provider — how its credentials are checked, which of
them are secret, how a client is built for a merchant, how its notifications are answered — is
here, so nothing else in the code asks which provider it is talking to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from payments.models import Provider
from payments.providers import alipay, wechatpay_v2, wechatpay_v3
from payments.providers.base import Answer, PaymentProvider


@dataclass(frozen=True)
class Urls:
    """Where the provider sends a merchant's notifications."""

    notify: str
    refund_notify: str


@dataclass(frozen=True)
class Settings:
    """What a client needs beyond the merchant: the gateways (the simulator in tests)."""

    wechatpay_api_base: str
    alipay_gateway: str


Build = Callable[[str, str, dict[str, Any], Urls, Settings], PaymentProvider]


@dataclass(frozen=True)
class ProviderKind:
    provider: Provider  # its title is the enum's (Provider.title, translated)
    notify_path: str  # under /payments, with {id} for the merchant
    refund_notify_path: str
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    secret_fields: tuple[str, ...]  # masked when shown, never logged
    build: Build  # (mchid, appid, config, urls, settings) → a client
    answer: Callable[..., Answer]  # (status, message) → the reply the provider expects
    checkout: str  # "jsapi" (WeChat's JS bridge) or "redirect" (a cashier page)
    statement: str  # the format of its daily statement: "wechat" or "alipay"


def _v3(mchid: str, appid: str, config: dict[str, Any], urls: Urls, settings: Settings) -> PaymentProvider:
    return wechatpay_v3.WeChatPayV3(
        mchid=mchid, appid=appid, **config, api_base=settings.wechatpay_api_base, notify_url=urls.notify
    )


def _v2(mchid: str, appid: str, config: dict[str, Any], urls: Urls, settings: Settings) -> PaymentProvider:
    return wechatpay_v2.WeChatPayV2(
        mchid=mchid,
        appid=appid,
        api_key=config["api_key"],
        sign_type=config.get("sign_type") or "MD5",
        cert_pem=config.get("cert_pem") or None,
        key_pem=config.get("key_pem") or None,
        api_base=settings.wechatpay_api_base,
        notify_url=urls.notify,
        refund_notify_url=urls.refund_notify,
    )


def _alipay(
    mchid: str, appid: str, config: dict[str, Any], urls: Urls, settings: Settings
) -> PaymentProvider:
    return alipay.AlipayProvider(
        app_id=appid,
        seller_id=mchid,
        app_private_key=config["app_private_key"],
        alipay_public_key=config["alipay_public_key"],
        gateway=settings.alipay_gateway,
        notify_url=urls.notify,
    )


REGISTRY: dict[Provider, ProviderKind] = {
    kind.provider: kind
    for kind in (
        ProviderKind(
            Provider.wechatpay_v3,
            notify_path="/wechatpay/v3/{id}/notify",
            refund_notify_path="/wechatpay/v3/{id}/notify",  # one URL for payments and refunds
            validate=wechatpay_v3.validate_config,
            secret_fields=("private_key", "apiv3_key"),
            build=_v3,
            answer=wechatpay_v3.WeChatPayV3.answer,
            checkout="jsapi",
            statement="wechat",
        ),
        ProviderKind(
            Provider.wechatpay_v2,
            notify_path="/wechatpay/v2/{id}/notify",
            refund_notify_path="/wechatpay/v2/{id}/refund-notify",
            validate=wechatpay_v2.validate_config,
            secret_fields=("api_key", "key_pem"),
            build=_v2,
            answer=wechatpay_v2.WeChatPayV2.answer,
            checkout="jsapi",
            statement="wechat",
        ),
        ProviderKind(
            Provider.alipay,
            notify_path="/alipay/{id}/notify",
            refund_notify_path="/alipay/{id}/notify",  # Alipay refunds synchronously
            validate=alipay.validate_config,
            secret_fields=("app_private_key",),
            build=_alipay,
            answer=alipay.AlipayProvider.answer,
            checkout="redirect",
            statement="alipay",
        ),
    )
}


def kind_of(provider: Provider | str) -> ProviderKind:
    return REGISTRY[Provider(provider)]
