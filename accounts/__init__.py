"""The tenant root: the account matrix, org units, subscribers and their ledger and timeline,
replies, menus, QR codes, staff, roles and audit; and the front doors every domain's pages build
on (``front_doors/console.py``: staff sign-in and the console blueprint factory;
``front_doors/h5.py``: subscribers' sign-in on H5 pages)."""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from wechat_service import i18n
from wechat_service.extensions import csrf
from wechat_service.periodic import declare
from wechat_service.router import directory


def init_app(app: Flask) -> None:
    """Models, callback handlers and the callback endpoint's account look-ups, console pages and
    API, mini-program sessions, CLI commands, the token keeper."""
    # Its own modules (handlers register, models add their tables): they import this package, so
    # they load here, once the app is being built.
    from accounts import api, cli, console, handlers, jobs, models, mp, services, timeline  # noqa: F401

    directory.register(services.callback_account, services.callback_account_by_id)
    timeline.contribute(app, "events", timeline.follow_events)  # domains above add theirs
    app.register_blueprint(console.bp)
    app.extensions["openapi"].register_blueprint(api.blp)
    csrf.exempt(mp.bp)  # mini-program sessions: wx.login codes and bearer tokens, no browser session
    app.extensions["openapi"].register_blueprint(mp.bp)
    declare(app, jobs.refresh_tokens, "default", interval=120)
    for command in (cli.account_cli, cli.orgunit_cli, cli.user_cli):
        app.cli.add_command(command)

    def staff_choice(kind: str) -> str | None:
        """The signed-in staff member's language or timezone, on console and staff API requests."""
        if not request.path.startswith(("/console", "/api/v1")):
            return None
        user = console.load_user()
        return getattr(user, kind, None) if user is not None else None

    # The console speaks the signed-in staff member's language, in their timezone.
    i18n.prefer(app, "locale", lambda: staff_choice("locale"))
    i18n.prefer(app, "timezone", lambda: staff_choice("timezone"))

    @app.context_processor
    def _console_user() -> dict[str, Any]:
        return {"console_user": console.load_user() if request.path.startswith("/console") else None}

