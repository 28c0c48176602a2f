"""Configuration: production refuses to start without its secrets, development keeps generated ones
in the instance folder, values are parsed and checked at start; master-key rotation."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask

from accounts import services
from tests import helpers
from wechat_service.app import create_app
from wechat_service.config import ConfigError
from wechat_service.extensions import db
from wechat_service.secrets import SecretUnreadableError, open_secret, seal_secret

PROD_SECRET = "p" * 40


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Any]:
    """Factory: a separate app on the test's own instance folder; closed again afterwards."""
    made: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        config: dict[str, Any] = {
            "INSTANCE_PATH": str(tmp_path),
            # Never connected to: these apps are only configured and inspected.
            "DATABASE_URL": f"{helpers.PG}/wechat_service_config_test",
            "REDIS_URL": f"{helpers.REDIS}/15",
            # Explicitly unset, whatever the environment holds: each test says what it configures.
            "SECRET_KEY": None,
            "MASTER_KEY": None,
            **overrides,
        }
        new = create_app(config)
        made.append(new)
        return new

    yield factory
    for made_app in made:
        with made_app.app_context():
            for engine in db.engines.values():
                engine.dispose()
        if made_app.extensions.get("redis") is not None:
            made_app.extensions["redis"].close()


def production(**overrides: Any) -> dict[str, Any]:
    return {
        "ENV": "production",
        "SECRET_KEY": PROD_SECRET,
        "MASTER_KEY": Fernet.generate_key().decode(),
        **overrides,
    }


# -- production ---------------------------------------------------------------------------------


def test_production_refuses_to_start_without_secrets(make_app: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(ENV="production")
    message = str(exc.value)
    assert "WECHAT_SERVICE_SECRET_KEY" in message and "WECHAT_SERVICE_MASTER_KEY" in message
    assert not (tmp_path / "secrets.json").exists()  # never generated in production


def test_production_names_only_what_is_missing(make_app: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(**production(MASTER_KEY=None))
    assert "WECHAT_SERVICE_MASTER_KEY" in str(exc.value) and "SECRET_KEY" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        make_app(**production(SECRET_KEY=""))
    assert "WECHAT_SERVICE_SECRET_KEY" in str(exc.value) and "MASTER_KEY" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        make_app(**production(DATABASE_URL=None, REDIS_URL=None))
    assert "DATABASE_URL" in str(exc.value) and "REDIS_URL" in str(exc.value)
    assert "WECHAT_SERVICE_" not in str(exc.value)


def test_production_needs_a_long_secret_key(make_app: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(**production(SECRET_KEY="short"))
    assert "at least 32" in str(exc.value)


def test_production_with_everything_configured(make_app: Any, tmp_path: Path) -> None:
    config = production()
    app = make_app(**config)
    assert app.config["SECRET_KEY"] == PROD_SECRET and app.config["MASTER_KEY"] == config["MASTER_KEY"]
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert not (tmp_path / "secrets.json").exists()


@pytest.mark.parametrize(
    "master_key",
    ["not-a-fernet-key", "c2hvcnQ=", f"{Fernet.generate_key().decode()},garbage"],
    ids=["garbage", "too-short", "one-bad-in-list"],
)
def test_a_bad_master_key_is_refused(make_app: Any, master_key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(SECRET_KEY=PROD_SECRET, MASTER_KEY=master_key)
    assert "WECHAT_SERVICE_MASTER_KEY" in str(exc.value)
    with pytest.raises(ConfigError):
        make_app(**production(MASTER_KEY=master_key))


def test_a_list_of_master_keys_is_accepted(make_app: Any) -> None:
    keys = f"{Fernet.generate_key().decode()}, {Fernet.generate_key().decode()}"
    app = make_app(**production(MASTER_KEY=keys))
    with app.app_context():
        assert open_secret(seal_secret("hello")) == "hello"


def test_unknown_env_is_refused(make_app: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(ENV="staging")
    assert "staging" in str(exc.value)


# -- development ----------------------------------------------------------------------------------


def test_development_generates_secrets_once_with_mode_0600(make_app: Any, tmp_path: Path) -> None:
    first = make_app()
    path = tmp_path / "secrets.json"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert first.config["SECRET_KEY"] == stored["SECRET_KEY"] and len(stored["SECRET_KEY"]) >= 32
    assert first.config["MASTER_KEY"] == stored["MASTER_KEY"]
    Fernet(stored["MASTER_KEY"])  # a usable key
    assert first.config["SESSION_COOKIE_SECURE"] is False

    second = make_app()
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    assert second.config["MASTER_KEY"] == first.config["MASTER_KEY"]
    assert json.loads(path.read_text()) == stored
    # What the first process sealed, a restart opens.
    with first.app_context():
        sealed = seal_secret("app-secret")
    with second.app_context():
        assert open_secret(sealed) == "app-secret"


def test_development_keeps_configured_secrets(make_app: Any, tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    app = make_app(SECRET_KEY="given-secret", MASTER_KEY=key)
    assert app.config["SECRET_KEY"] == "given-secret" and app.config["MASTER_KEY"] == key
    assert not (tmp_path / "secrets.json").exists()
    # Only the missing one is generated.
    half = make_app(SECRET_KEY="given-secret")
    assert half.config["SECRET_KEY"] == "given-secret"
    assert half.config["MASTER_KEY"] == json.loads((tmp_path / "secrets.json").read_text())["MASTER_KEY"]


# -- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:pw@db.example:5432/wx", "postgresql+psycopg://u:pw@db.example:5432/wx"),
        ("postgresql://u@127.0.0.1/wx", "postgresql+psycopg://u@127.0.0.1/wx"),
        ("postgresql+psycopg://u@127.0.0.1/wx", "postgresql+psycopg://u@127.0.0.1/wx"),
    ],
)
def test_database_urls_are_normalised(make_app: Any, given: str, expected: str) -> None:
    app = make_app(SECRET_KEY="s", MASTER_KEY=Fernet.generate_key().decode(), DATABASE_URL=given)
    assert app.config["SQLALCHEMY_DATABASE_URI"] == expected
    assert app.config["DATABASE_URL"] == given
    with app.app_context():
        assert db.engine.url.drivername == "postgresql+psycopg"


def test_without_database_url_development_uses_sqlite_in_the_instance_folder(
    make_app: Any, tmp_path: Path
) -> None:
    app = make_app(DATABASE_URL=None)
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'wechat_service.db'}"


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("CALLBACK_MAX_BODY", "lots", "an integer"),
        ("CALLBACK_MAX_BODY", None, "an integer"),
        ("MP_SESSION_TTL", "1.5", "an integer"),
        ("CALLBACK_BUDGET", "fast", "a number"),
        ("WECHAT_API_BASE", "ftp://api.example", "an http(s) URL"),
    ],
)
def test_bad_values_are_refused(make_app: Any, key: str, value: Any, kind: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_app(**{key: value})
    assert f"WECHAT_SERVICE_{key}" in str(exc.value) and kind in str(exc.value)


def test_values_are_parsed_into_types(make_app: Any) -> None:
    app = make_app(
        CALLBACK_MAX_BODY="131072",
        CALLBACK_BUDGET="2.5",
        WECHAT_API_BASE="http://127.0.0.1:9/wechat/",
        PUBLIC_BASE_URL="https://svc.example/",
    )
    assert app.config["CALLBACK_MAX_BODY"] == 131072
    assert app.config["CALLBACK_BUDGET"] == 2.5
    assert app.config["WECHAT_API_BASE"] == "http://127.0.0.1:9/wechat"
    assert app.config["PUBLIC_BASE_URL"] == "https://svc.example"
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024


# -- master-key rotation ------------------------------------------------------------------------------


def test_master_key_rotation_reseals_every_secret(app: Flask) -> None:
    from wechat_service.rotation import reseal_all

    fields = helpers.account_fields("safe")
    services.add_account(**fields)
    services.rotate_aes_key(fields["appid"])  # previous_aes_key set too: four sealed values
    db.session.commit()
    old = app.config["MASTER_KEY"]
    new = Fernet.generate_key().decode()
    query = sa.text("SELECT app_secret, token, aes_key, previous_aes_key FROM accounts WHERE appid = :a")
    try:
        app.config["MASTER_KEY"] = f"{new},{old}"
        counts = reseal_all()
        db.session.commit()
        assert counts["accounts"] == 4 and counts["mp_sessions"] == 0

        app.config["MASTER_KEY"] = new
        db.session.expire_all()
        account = services.account_by_appid(fields["appid"])
        assert (account.app_secret, account.token, account.previous_aes_key) == (
            fields["app_secret"],
            fields["token"],
            fields["aes_key"],
        )
        raw = db.session.execute(query, {"a": fields["appid"]}).one()
        assert Fernet(new).decrypt(raw.app_secret.encode()).decode() == fields["app_secret"]
        assert Fernet(new).decrypt(raw.aes_key.encode()).decode() == account.aes_key

        # The old key alone no longer opens anything: every value was re-sealed.
        app.config["MASTER_KEY"] = old
        for value in raw:
            with pytest.raises(SecretUnreadableError):
                open_secret(value)
    finally:
        app.config["MASTER_KEY"] = old
        db.session.expire_all()


def test_secrets_rotate_command(app: Flask) -> None:
    fields = helpers.account_fields("plain", aes_key=None)
    services.add_account(**fields)
    db.session.commit()
    old = app.config["MASTER_KEY"]
    new = Fernet.generate_key().decode()
    try:
        app.config["MASTER_KEY"] = f"{new},{old}"
        result = app.test_cli_runner().invoke(args=["secrets", "rotate"])
        assert result.exit_code == 0, result.output
        assert "accounts: 2 values re-encrypted" in result.stdout
        app.config["MASTER_KEY"] = new
        db.session.expire_all()
        assert services.account_by_appid(fields["appid"]).app_secret == fields["app_secret"]
    finally:
        app.config["MASTER_KEY"] = old
        db.session.expire_all()


def test_an_existing_loose_secrets_file_is_tightened(make_app: Any, tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"SECRET_KEY": "k" * 48}))
    path.chmod(0o644)
    app = make_app()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert app.config["SECRET_KEY"] == "k" * 48 and "MASTER_KEY" in json.loads(path.read_text())
