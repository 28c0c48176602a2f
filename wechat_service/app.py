"""The application factory. Nothing connects at import time; migrations never run here."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Unauthorized

from wechat_service import i18n
from wechat_service.config import load_config
from wechat_service.errors import register_error_handlers
from wechat_service.extensions import JsonApi, csrf, db, init_redis, migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# The domains, from the ground up (DESIGN.md, "The ladder"): each one's ``init_app`` registers
# its models, callback handlers, blueprints, API, CLI commands and periodic jobs.
DOMAINS = ("accounts", "payments", "store", "templates_msg", "metrics")


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    instance = (overrides or {}).get("INSTANCE_PATH") or os.environ.get("WECHAT_SERVICE_INSTANCE_PATH")
    app = Flask("wechat_service", instance_path=str(instance or Path.cwd() / "instance"))
    load_config(app, overrides)
    _fixed_settings(app)
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Exactly this many proxies append to X-Forwarded-For/-Proto; entries further left are
        # the client's own claims and stay unbelieved (per-IP login throttling counts on it).
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    from wechat_service import security

    security.init_app(app)  # the H5 session's own cookie; CSP and other headers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    init_redis(app)
    csrf.init_app(app)
    i18n.init_app(app)
    register_error_handlers(app)
    # The console API and its OpenAPI document (flask-smorest); its HTTP error handler, which
    # answers in our error shape, replaces the generic one registered just above.
    openapi = JsonApi(app)
    openapi.spec.components.security_scheme("mpSession", {"type": "http", "scheme": "bearer"})
    app.extensions["openapi"] = openapi
    _init_base(app)
    for name in DOMAINS:
        importlib.import_module(name).init_app(app)

    @app.get("/")
    def _front() -> ResponseReturnValue:
        """The service's own address leads people to the console (WeChat never asks for it)."""
        return redirect(url_for("console.overview"), 302)

    @app.before_request
    def _openapi_needs_sign_in() -> None:
        # The API's map is for staff: public only where configured (development by default).
        from accounts.front_doors.console import load_user

        if request.blueprint == "api-docs" and not app.config["OPENAPI_PUBLIC"] and load_user() is None:
            raise Unauthorized("sign in to the console first")

    from wechat_service.cli import register_commands  # the CLI module imports this one

    register_commands(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app


def _fixed_settings(app: Flask) -> None:
    """What no deployment configures: the body limit (from the callback's), the console's session
    cookie and CSRF token, the OpenAPI document's names, JSON in UTF-8."""
    app.config["MAX_CONTENT_LENGTH"] = max(app.config["CALLBACK_MAX_BODY"], 1024 * 1024)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="ws_console",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_TIME_LIMIT=None,
        API_TITLE="wechat-service console API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]


def _init_base(app: Flask) -> None:
    """The base's own parts: its models, the callback endpoint, the inbox job."""
    from wechat_service import endpoints, jobs, models  # noqa: F401 - models register their tables
    from wechat_service.periodic import declare

    app.register_blueprint(endpoints.bp)
    # Provider-facing and token-authenticated endpoints carry no browser session: no CSRF token.
    csrf.exempt(endpoints.bp)
    declare(app, jobs.requeue_stale_inbox, "high", interval=60)
