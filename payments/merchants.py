"""Merchants: an account's credentials at each provider, validated by the provider when saved and
sealed at rest; and the client for a merchant, built through the provider registry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from flask import current_app

from accounts.models import Account
from payments.errors import PaymentErrorCode
from payments.models import Merchant, Provider
from payments.providers import Settings, Urls, kind_of
from payments.providers.base import PaymentProvider
from wechat_service.errors import InvalidInputError, NotFoundError, ServiceError
from wechat_service.extensions import db


class MerchantConfigError(ServiceError):
    """A merchant's stored configuration cannot be used (a key that does not load, say): an
    operator has to fix it; notifications meanwhile get the provider's failure reply (so the
    provider retries), never a 500."""

    code = PaymentErrorCode.merchant_misconfigured
    status = 503


def save(
    account_id: int, provider: Provider | str, *, mchid: str, appid: str, config: dict[str, Any]
) -> Merchant:
    """Add or replace the account's merchant at ``provider``; the credentials are checked by the
    provider first (InvalidInputError naming each bad field). Flushed, not committed."""
    kind = kind_of(provider)
    if db.session.get(Account, account_id) is None:
        raise NotFoundError("no such account")
    problems = {
        name: ["required (at most 32 characters)"]
        for name, value in (("mchid", mchid), ("appid", appid))
        if not value.strip() or len(value.strip()) > 32
    }
    if problems:
        raise InvalidInputError("the merchant's numbers are not valid", fields=problems)
    checked = kind.validate(config)
    merchant = db.session.scalar(
        sa.select(Merchant).where(Merchant.account_id == account_id, Merchant.provider == kind.provider)
    )
    if merchant is None:
        merchant = Merchant(account_id=account_id, provider=kind.provider)
        db.session.add(merchant)
    merchant.mchid, merchant.appid, merchant.config = mchid.strip(), appid.strip(), checked
    db.session.flush()
    return merchant


def _appid_of(account_id: int, appid: str | None) -> str:
    if appid:
        return appid
    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFoundError("no such account")
    return account.appid


def add_merchant(
    account_id: int,
    *,
    mchid: str,
    serial_no: str,
    private_key: str,
    apiv3_key: str,
    platform_public_key: str,
    platform_public_key_id: str,
    appid: str | None = None,
) -> Merchant:
    """A WeChat Pay v3 merchant (public-key mode), paid through the account's appid by default."""
    config = {
        "serial_no": serial_no,
        "private_key": private_key,
        "apiv3_key": apiv3_key,
        "platform_public_key": platform_public_key,
        "platform_public_key_id": platform_public_key_id,
    }
    return save(
        account_id, Provider.wechatpay_v3, mchid=mchid, appid=_appid_of(account_id, appid), config=config
    )


def add_wechatpay_v2_merchant(
    account_id: int,
    *,
    mchid: str,
    api_key: str,
    sign_type: str = "MD5",
    appid: str | None = None,
    cert_pem: str = "",
    key_pem: str = "",
) -> Merchant:
    """A merchant still on API v2: its API key signs everything; the client certificate (optional
    here, required by WeChat Pay for refunds in production) authenticates refund requests."""
    config = {"api_key": api_key, "sign_type": sign_type, "cert_pem": cert_pem, "key_pem": key_pem}
    return save(
        account_id, Provider.wechatpay_v2, mchid=mchid, appid=_appid_of(account_id, appid), config=config
    )


def add_alipay_merchant(
    account_id: int, *, app_id: str, seller_id: str, app_private_key: str, alipay_public_key: str
) -> Merchant:
    config = {"app_private_key": app_private_key, "alipay_public_key": alipay_public_key}
    return save(account_id, Provider.alipay, mchid=seller_id, appid=app_id, config=config)


def merchant_for(account_id: int, provider: Provider | str = Provider.wechatpay_v3) -> Merchant:
    merchant = db.session.scalar(
        sa.select(Merchant).where(Merchant.account_id == account_id, Merchant.provider == Provider(provider))
    )
    if merchant is None:
        raise NotFoundError(f"this account has no {Provider(provider).value} merchant configured")
    return merchant


PROVIDERS: tuple[str, ...] = tuple(p.value for p in Provider)  # what an order may name


def providers_of(account_id: int) -> list[str]:
    """The providers the account has a merchant at, in the registry's order (v3 before v2)."""
    have = set(db.session.scalars(sa.select(Merchant.provider).where(Merchant.account_id == account_id)))
    return [p.value for p in Provider if p in have]


def checkout_of(provider: Provider | str) -> str:
    """How a payer pays there: ``jsapi`` (WeChat's JS bridge) or ``redirect`` (a cashier page)."""
    return kind_of(provider).checkout


def merchant_at(merchant_id: int, provider: Provider) -> Merchant | None:
    """The merchant a notification URL names, if it is at that provider."""
    merchant = db.session.get(Merchant, merchant_id)
    return merchant if merchant is not None and merchant.provider is provider else None


def client_for(merchant: Merchant) -> PaymentProvider:
    """The merchant's client, cached per process: parsing an RSA private key costs tens of
    milliseconds (OpenSSL checks it), far more than verifying a notification."""
    cfg = current_app.config
    settings = Settings(wechatpay_api_base=cfg["WECHATPAY_API_BASE"], alipay_gateway=cfg["ALIPAY_GATEWAY"])
    kind = kind_of(merchant.provider)
    base = f"{cfg['PUBLIC_BASE_URL']}/payments"
    urls = Urls(
        notify=base + kind.notify_path.format(id=merchant.id),
        refund_notify=base + kind.refund_notify_path.format(id=merchant.id),
    )
    described = [merchant.provider.value, merchant.mchid, merchant.appid, merchant.config, settings, urls]
    fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True, default=vars).encode()).hexdigest()
    cached = _clients.get(merchant.id)
    if cached and cached[0] == fingerprint:
        return cached[1]
    try:
        client = kind.build(merchant.mchid, merchant.appid, dict(merchant.config), urls, settings)
    except Exception as exc:  # noqa: BLE001 - whatever the SDK or OpenSSL raise on a stored configuration
        # The type only: a key parser's message could quote the secret.
        raise MerchantConfigError(
            f"the {merchant.provider.value} merchant {merchant.id} cannot be used ({type(exc).__name__})"
        ) from None
    _clients[merchant.id] = (fingerprint, client)
    return client


_clients: dict[int, tuple[str, PaymentProvider]] = {}


def masked_config(merchant: Merchant) -> dict[str, str]:
    """The merchant's configuration as staff may see it: secrets reduced to their last 4 characters."""
    secret = kind_of(merchant.provider).secret_fields
    return {
        name: ("••••" + str(value)[-4:] if value else "") if name in secret else str(value)
        for name, value in sorted(merchant.config.items())
    }
