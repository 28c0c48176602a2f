"""Key and credential checks shared by the providers: what is saved is validated first, with a
clear error per field, and keys are stored in one form (PEM)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wechat_service.errors import InvalidInputError


def _der(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)


def public_key_pem(text: str) -> str:
    """An RSA public key as PEM, given as PEM or as the bare base64 Alipay's console shows;
    ValueError if it is neither (an RSA public key, that is)."""
    text = (text or "").strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(_der(text))
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key (PEM or base64)")
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_key_pem(text: str, *, pkcs8: bool = False) -> str:
    """A private key as the PKCS#1 PEM alipay-sdk requires (PKCS#8 when ``pkcs8``: wechatpayv3 only
    reads ``BEGIN PRIVATE KEY``), given as PEM (PKCS#1 or #8) or as
    bare base64; ValueError if it is neither."""
    text = (text or "").strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = serialization.load_der_private_key(_der(text), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: a key with a password
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key (PEM or base64, without a password)")
    if key.key_size < 2048:
        raise ValueError("the key has fewer than 2048 bits")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def check_fields(config: dict[str, Any], checks: dict[str, Callable[[str], str]]) -> dict[str, Any]:
    """Each field through its check (which normalises it or raises ValueError); every problem at
    once, by field. Fields without a check are refused (a typo must not pass silently)."""
    problems: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    for name in config:
        if name not in checks:
            problems[name] = ["unknown field"]
    for name, check in checks.items():
        value = config.get(name)
        if not isinstance(value, str):
            problems[name] = ["required"]
            continue
        try:
            out[name] = check(value)
        except ValueError as exc:
            problems[name] = [str(exc) or "invalid"]
    if problems:
        raise InvalidInputError("the merchant's credentials are not valid", fields=problems)
    return out


def optional(check: Callable[[str], str]) -> Callable[[str], str]:
    """An empty value stays empty; anything else passes ``check``."""
    return lambda value: check(value) if value.strip() else ""
