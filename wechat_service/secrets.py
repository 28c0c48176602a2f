"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with MultiFernet for key rotation.

``WECHAT_SERVICE_MASTER_KEY`` is a comma-separated list; the first key seals, every key opens,
and `wechat-service secrets rotate` re-seals every stored secret under the first key.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class SecretUnreadableError(RuntimeError):
    """A stored secret cannot be opened with any configured master key."""


@lru_cache(maxsize=8)
def _box(master_keys: str) -> MultiFernet:
    return MultiFernet([Fernet(k.strip()) for k in master_keys.split(",") if k.strip()])


def box() -> MultiFernet:
    return _box(str(current_app.config["MASTER_KEY"]))


def seal_secret(value: str) -> str:
    return box().encrypt(value.encode()).decode()


def open_secret(token: str) -> str:
    try:
        return box().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadableError(
            "a stored secret cannot be decrypted with WECHAT_SERVICE_MASTER_KEY (was the key replaced "
            "instead of rotated?)"
        ) from None


def reseal(token: str) -> str:
    """Re-encrypt a sealed value under the first (current) master key."""
    return box().rotate(token.encode()).decode()


def mask(value: str | None, keep: int = 4) -> str:
    """What the console and CLI show of a secret: its length and last characters, never more."""
    if not value:
        return ""
    if len(value) <= keep * 2:
        return "*" * len(value)
    return "*" * (len(value) - keep) + value[-keep:]
