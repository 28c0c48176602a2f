"""The application factory. Nothing connects at import time; migrations never run here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

from wechat_service.config import load_config
from wechat_service.errors import register_error_handlers
from wechat_service.extensions import db, init_redis, migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    instance = (overrides or {}).get("INSTANCE_PATH") or os.environ.get("WECHAT_SERVICE_INSTANCE_PATH")
    app = Flask("wechat_service", instance_path=str(instance or Path.cwd() / "instance"))
    load_config(app, overrides)
    app.config["MAX_CONTENT_LENGTH"] = max(app.config["CALLBACK_MAX_BODY"], 1024 * 1024)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    init_redis(app)

    # Models and callback handlers of every domain: importing registers them.
    import accounts.handlers  # noqa: F401
    import accounts.models  # noqa: F401
    import wechat_service.models  # noqa: F401
    from accounts.cli import account_cli, orgunit_cli
    from wechat_service import api, views
    from wechat_service.cli import register_commands

    # Blueprints, explicitly.
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)

    register_error_handlers(app)
    app.cli.add_command(account_cli)
    app.cli.add_command(orgunit_cli)
    register_commands(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app
