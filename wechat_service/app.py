"""The application factory. Nothing connects at import time; migrations never run here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import Unauthorized

from wechat_service.config import load_config
from wechat_service.errors import register_error_handlers
from wechat_service.extensions import JsonApi, csrf, db, init_redis, migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    instance = (overrides or {}).get("INSTANCE_PATH") or os.environ.get("WECHAT_SERVICE_INSTANCE_PATH")
    app = Flask("wechat_service", instance_path=str(instance or Path.cwd() / "instance"))
    load_config(app, overrides)
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

    # Models and callback handlers of every domain: importing registers them.
    import accounts.handlers  # noqa: F401
    import accounts.models  # noqa: F401
    import metrics.models  # noqa: F401
    import payments.models  # noqa: F401
    import store.handlers  # noqa: F401
    import store.models  # noqa: F401
    import templates_msg.handlers  # noqa: F401
    import templates_msg.models  # noqa: F401
    import wechat_service.models  # noqa: F401

    # Blueprints, explicitly.
    from accounts import api as console_api
    from accounts import views as console_views
    from accounts.cli import account_cli, orgunit_cli, user_cli
    from accounts.console import load_user
    from wechat_service import api, views
    from wechat_service.cli import register_commands

    app.register_blueprint(views.bp)
    app.register_blueprint(console_views.bp)
    from payments import console as payments_console
    from payments import views as payment_views
    from store import api as store_api
    from store import console as store_console
    from store import views as store_views

    app.register_blueprint(store_views.bp)  # H5 store pages: CSRF stays on for their forms
    app.register_blueprint(store_console.bp)
    app.register_blueprint(payment_views.bp)
    app.register_blueprint(payments_console.bp)
    from metrics import console as metrics_console

    app.register_blueprint(metrics_console.bp)
    from templates_msg import tracking as campaign_tracking
    from templates_msg import views as campaign_views

    app.register_blueprint(campaign_views.bp)
    app.register_blueprint(campaign_tracking.bp)  # /t/<token>: a GET redirect, no form
    # Provider-facing and token-authenticated endpoints carry no browser session: no CSRF token.
    csrf.init_app(app)
    csrf.exempt(views.bp)
    csrf.exempt(api.bp)
    csrf.exempt(store_api.bp)
    csrf.exempt(payment_views.bp)

    @app.context_processor
    def _console_user() -> dict[str, Any]:
        return {"console_user": load_user() if request.path.startswith("/console") else None}

    register_error_handlers(app)
    # The console API and its OpenAPI document (flask-smorest); its HTTP error handler, which
    # answers in our error shape, replaces the generic one registered just above.
    openapi = JsonApi(app)
    openapi.register_blueprint(console_api.blp)
    # The mini-program API, authenticated by its session token rather than the console's cookie.
    openapi.spec.components.security_scheme("mpSession", {"type": "http", "scheme": "bearer"})
    openapi.register_blueprint(api.bp)
    openapi.register_blueprint(store_api.bp)
    from metrics import api as metrics_api

    openapi.register_blueprint(metrics_api.blp)
    from templates_msg import api as campaign_api

    openapi.register_blueprint(campaign_api.blp)
    app.extensions["openapi"] = openapi

    @app.before_request
    def _openapi_needs_sign_in() -> None:
        # The API's map is for staff: public only where configured (development by default).
        if request.blueprint == "api-docs" and not app.config["OPENAPI_PUBLIC"] and load_user() is None:
            raise Unauthorized("sign in to the console first")

    app.cli.add_command(account_cli)
    app.cli.add_command(orgunit_cli)
    app.cli.add_command(user_cli)
    register_commands(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app
