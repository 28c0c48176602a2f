"""The tenant root: the account matrix, org units, subscribers and their ledger, replies, menus,
QR codes, staff, roles and audit; and the console's front door (sign-in, access, the console
blueprint factory) that every domain's pages build on."""

from __future__ import annotations

from typing import Any

from flask import Flask, request


def init_app(app: Flask) -> None:
    """Models, callback handlers, console pages and API, CLI commands."""
    from accounts import api, handlers, models, views  # noqa: F401 - importing registers handlers
    from accounts.cli import account_cli, orgunit_cli, user_cli
    from accounts.console import load_user

    app.register_blueprint(views.bp)
    app.extensions["openapi"].register_blueprint(api.blp)
    for command in (account_cli, orgunit_cli, user_cli):
        app.cli.add_command(command)

    @app.context_processor
    def _console_user() -> dict[str, Any]:
        return {"console_user": load_user() if request.path.startswith("/console") else None}
