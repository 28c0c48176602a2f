"""In-process test fixtures: the app on a real PostgreSQL test database (tables built once, one
outer transaction rolled back per test even when the code commits), a real Redis database,
and the simulator as a real process over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from tests import factories, helpers


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = helpers.free_port()
    log = tmp_path_factory.mktemp("sim") / "simulator.log"
    proc = helpers.start(helpers.cli("simulator", "--port", str(port)), dict(__import__("os").environ), log)
    base = f"http://127.0.0.1:{port}"
    helpers.wait_http(f"{base}/_sim/health", proc)
    requests.post(
        f"{base}/_sim/boss/clients",
        json={"app_id": "wechat-service-test", "secret": helpers.BOSS_SECRET},
        timeout=5,
    ).raise_for_status()
    yield base
    helpers.stop(proc)


@pytest.fixture(scope="session")
def app(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    from wechat_service.app import create_app
    from wechat_service.extensions import db

    url = helpers.recreate_database(helpers.DB_NAME)
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
            "DATABASE_URL": url,
            "REDIS_URL": f"{helpers.REDIS}/{helpers.REDIS_DB}",
            "SECRET_KEY": helpers.SECRET_KEY,
            "MASTER_KEY": helpers.MASTER_KEY,
            "WECHAT_API_BASE": f"{simulator}/wechat",
            "WECHAT_OPEN_BASE": f"{simulator}/wechat-open",
            "PUBLIC_BASE_URL": "http://service.test",
            "CALLBACK_BUDGET": 0.5,
            "BOSS_API_BASE": f"{simulator}/boss",
            "WECHATPAY_API_BASE": f"{simulator}/wechatpay",
            "ALIPAY_GATEWAY": f"{simulator}/alipay/gateway.do",
            "BOSS_APP_ID": "wechat-service-test",
            "BOSS_SECRET": helpers.BOSS_SECRET,
            "WECHAT_BUSY_RETRIES": 2,
        }
    )
    with app.app_context():
        db.create_all()
    app.test_client_class = RequestScopedClient
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()
    app.extensions["redis"].close()


class RequestScopedClient(FlaskClient):
    """Each request in its own app context, as in production: a fresh ``g`` and its own database
    session (on the test's outer transaction), even while the test holds an app context open."""

    def open(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def _outer_transaction(request: pytest.FixtureRequest) -> Iterator[None]:
    """Wrap in-process tests that use the app in one transaction, rolled back at the end."""
    if "app" not in request.fixturenames or request.node.get_closest_marker("live"):
        yield
        return
    app: Flask = request.getfixturevalue("app")
    from wechat_service.extensions import db

    with app.app_context():
        engines = db.engines
        original = engines[None]
        conn = original.connect()
        outer = conn.begin()
        engines[None] = conn  # type: ignore[assignment]
        db.session.remove()
        db.session.configure(join_transaction_mode="create_savepoint")
        app.extensions["redis"].flushdb()
        try:
            yield
        finally:
            db.session.remove()
            engines[None] = original
            outer.rollback()
            conn.close()


@pytest.fixture
def redis_conn(app: Flask) -> redis.Redis:
    return app.extensions["redis"]


@pytest.fixture
def create_account(app: Flask, simulator: str) -> Any:
    """Factory: an account in the service and the simulator; returns (account, fields, target)."""

    def factory(mode: str = "plain", **overrides: Any):  # type: ignore[no-untyped-def]
        return factories.account(simulator, mode, **overrides)

    return factory


@pytest.fixture
def create_staff(app: Flask) -> Any:
    """Factory: a staff user (admin, or with grants) signed in through the login form."""
    from accounts import staff as staff_services
    from tests.console_helpers import PASSWORD, Staff
    from wechat_service.extensions import db

    counter = iter(range(1, 10_000))

    def factory(
        role: str | None = None,
        *,
        account_id: int | None = None,
        org_unit: str | None = None,
        admin: bool = False,
        can_approve: bool = False,
        login: bool = True,
    ):  # type: ignore[no-untyped-def]
        user = staff_services.create_user(f"user{next(counter)}-{role or 'admin'}", PASSWORD, is_admin=admin)
        if role:
            staff_services.add_grant(
                user, role, account_id=account_id, org_unit_code=org_unit, can_approve=can_approve
            )
        db.session.commit()
        return Staff(app, user.username) if login else user

    return factory
