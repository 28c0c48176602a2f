"""Configuration from the environment, parsed into types and validated at start.

`DATABASE_URL` and `REDIS_URL` keep their universal names; everything else is read with
Flask's ``from_prefixed_env("WECHAT_SERVICE")`` so ``WECHAT_SERVICE_SECRET_KEY`` becomes
``app.config["SECRET_KEY"]``. Tests pass a dict of overrides instead of patching the environment.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from flask import Flask

DEFAULTS: dict[str, Any] = {
    "ENV": "development",
    "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    "WECHAT_API_BASE": "https://api.weixin.qq.com",
    "WECHAT_OPEN_BASE": "https://open.weixin.qq.com",
    "WECHATPAY_API_BASE": "https://api.mch.weixin.qq.com",
    "ALIPAY_GATEWAY": "https://openapi.alipay.com/gateway.do",
    "BOSS_API_BASE": "",
    # Callback endpoint limits. WeChat re-sends a message at most 3 times within ~15 s, so
    # both windows sit far above that span.
    "CALLBACK_MAX_BODY": 64 * 1024,
    "CALLBACK_TIMESTAMP_WINDOW": 300,
    "CALLBACK_DEDUP_TTL": 900,
    # Answer well inside WeChat's 5 s: a retry waiting for its original gives up after this.
    "CALLBACK_BUDGET": 3.0,
    # Outgoing WeChat API calls.
    "WECHAT_HTTP_TIMEOUT": 5.0,
    "WECHAT_BUSY_RETRIES": 3,
    "TOKEN_EARLY_REFRESH": 300,
    "MP_SESSION_TTL": 7 * 24 * 3600,
    # The BOSS (docs/boss-api.md): credentials, and how long an inquiry inside a callback may wait.
    "BOSS_APP_ID": "wechat-service",
    "BOSS_SECRET": "",
    "BOSS_READ_TIMEOUT": 3.0,
    "BOSS_WRITE_TIMEOUT": 10.0,
    "INQUIRY_TIMEOUT": 1.5,
    # Seconds all of one account's regex auto-reply rules may take on one message, together.
    "REPLY_REGEX_BUDGET": 0.08,
    "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
    # How many reverse proxies in front of the web process append to X-Forwarded-For/-Proto.
    # 0 believes none of it: a client could otherwise pick its own IP (and dodge per-IP limits).
    "TRUSTED_PROXIES": 0,
    # OPENAPI_PUBLIC (the /api/v1/openapi.json document without signing in) defaults to on in
    # development and off in production; see load_config.
    # Connections per process: at least one per request thread (`wechat-service web --threads`
    # raises it), so a busy threaded worker never queues on the pool.
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 10,
}

_INT_KEYS = {
    "CALLBACK_MAX_BODY",
    "CALLBACK_TIMESTAMP_WINDOW",
    "CALLBACK_DEDUP_TTL",
    "WECHAT_BUSY_RETRIES",
    "TOKEN_EARLY_REFRESH",
    "MP_SESSION_TTL",
    "TRUSTED_PROXIES",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
}
_FLOAT_KEYS = {
    "CALLBACK_BUDGET",
    "WECHAT_HTTP_TIMEOUT",
    "BOSS_READ_TIMEOUT",
    "BOSS_WRITE_TIMEOUT",
    "INQUIRY_TIMEOUT",
    "REPLY_REGEX_BUDGET",
}
_URL_KEYS = {
    "PUBLIC_BASE_URL",
    "WECHAT_API_BASE",
    "WECHAT_OPEN_BASE",
    "WECHATPAY_API_BASE",
    "ALIPAY_GATEWAY",
    "BOSS_API_BASE",
}


class ConfigError(RuntimeError):
    """The configuration cannot run: the message says what to set."""


def load_config(app: Flask, overrides: dict[str, Any] | None = None) -> None:
    """Fill ``app.config`` from defaults, the environment and ``overrides``; validate it."""
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env("WECHAT_SERVICE")
    if os.environ.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    if os.environ.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    app.config.update(overrides or {})
    _coerce(app.config)
    env = app.config["ENV"]
    if env not in ("development", "production"):
        raise ConfigError(f"WECHAT_SERVICE_ENV must be development or production, not {env!r}")
    if app.config["TRUSTED_PROXIES"] < 0:
        raise ConfigError("WECHAT_SERVICE_TRUSTED_PROXIES must be 0 or more")
    app.config["OPENAPI_PUBLIC"] = _flag(
        "OPENAPI_PUBLIC", app.config.get("OPENAPI_PUBLIC", env == "development")
    )
    if env == "production":
        missing = [name for name in ("SECRET_KEY", "MASTER_KEY") if not app.config.get(name)]
        missing += [name for name in ("DATABASE_URL", "REDIS_URL") if not app.config.get(name)]
        if missing:
            raise ConfigError(
                "production refuses to start without: "
                + ", ".join(n if n.endswith("_URL") else f"WECHAT_SERVICE_{n}" for n in missing)
            )
        if len(str(app.config["SECRET_KEY"])) < 32:
            raise ConfigError("WECHAT_SERVICE_SECRET_KEY must be at least 32 characters in production")
    else:
        _ensure_dev_secrets(app)
    _check_master_keys(app.config["MASTER_KEY"])
    url = app.config.get("DATABASE_URL") or _sqlite_url(app)
    app.config["DATABASE_URL"] = url
    app.config["SQLALCHEMY_DATABASE_URI"] = _normalise_db_url(url)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
            "connect_args": {"timeout": 30},
        }
    else:
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": app.config["DB_POOL_SIZE"],
            "max_overflow": app.config["DB_MAX_OVERFLOW"],
            **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
        }
    app.config["SESSION_COOKIE_SECURE"] = env == "production"


def _coerce(config: dict[str, Any]) -> None:
    for key in _INT_KEYS:
        try:
            config[key] = int(config[key])
        except (TypeError, ValueError):
            raise ConfigError(f"WECHAT_SERVICE_{key} must be an integer, got {config[key]!r}") from None
    for key in _FLOAT_KEYS:
        try:
            config[key] = float(config[key])
        except (TypeError, ValueError):
            raise ConfigError(f"WECHAT_SERVICE_{key} must be a number, got {config[key]!r}") from None
    for key in _URL_KEYS:
        value = str(config.get(key) or "").rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"WECHAT_SERVICE_{key} must be an http(s) URL, got {value!r}")
        config[key] = value


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"WECHAT_SERVICE_{key} must be true or false, got {value!r}")


def _ensure_dev_secrets(app: Flask) -> None:
    """Development keeps generated secrets in the instance folder (mode 0600) across restarts."""
    if app.config.get("SECRET_KEY") and app.config.get("MASTER_KEY"):
        return
    path = Path(app.instance_path) / "secrets.json"
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    if "SECRET_KEY" not in stored:
        stored["SECRET_KEY"] = secrets.token_urlsafe(48)
        changed = True
    if "MASTER_KEY" not in stored:
        stored["MASTER_KEY"] = Fernet.generate_key().decode()
        changed = True
    if changed:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    # An existing file keeps its mode through O_TRUNC: tighten it whatever it was.
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    app.config.setdefault("SECRET_KEY", None)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or stored["SECRET_KEY"]
    app.config["MASTER_KEY"] = app.config.get("MASTER_KEY") or stored["MASTER_KEY"]


def _check_master_keys(value: str) -> None:
    # A comma-separated list: the first key encrypts, all of them decrypt (rotation).
    for key in str(value).split(","):
        try:
            Fernet(key.strip())
        except (ValueError, TypeError):
            raise ConfigError(
                "WECHAT_SERVICE_MASTER_KEY must be comma-separated Fernet keys "
                "(generate one with `wechat-service secrets generate-key`)"
            ) from None


def _sqlite_url(app: Flask) -> str:
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + str(Path(app.instance_path) / "wechat_service.db")


def _normalise_db_url(url: str) -> str:
    # Operators paste postgres:// URLs from their platform; we drive PostgreSQL with psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
