"""One linear migration history, and `upgrade head` on an empty PostgreSQL matches the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import upgrade

from tests import helpers
from wechat_service.app import MIGRATIONS_DIR, create_app
from wechat_service.extensions import db


def test_one_head() -> None:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def test_every_revision_has_a_message() -> None:
    for path in Path(MIGRATIONS_DIR / "versions").glob("*.py"):
        assert '"""' in path.read_text().splitlines()[0] and len(path.read_text().splitlines()[0]) > 6


def _upgrade_and_diff(overrides: dict[str, str]) -> list[object]:
    app = create_app({"SECRET_KEY": helpers.SECRET_KEY, "MASTER_KEY": helpers.MASTER_KEY, **overrides})
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata
            )
        db.engine.dispose()
    return diff


def test_upgrade_head_matches_the_models(tmp_path: Path) -> None:
    url = helpers.recreate_database(f"{helpers.DB_NAME}_migrations")
    assert _upgrade_and_diff({"DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path)}) == []


def test_upgrade_head_on_sqlite_too(tmp_path: Path) -> None:
    assert _upgrade_and_diff({"INSTANCE_PATH": str(tmp_path)}) == []


def test_enum_check_constraints_follow_the_models_on_sqlite(tmp_path: Path) -> None:
    """Autogenerate cannot see enum values kept in CHECK constraints: hand-written migrations must."""
    import sqlite3

    _upgrade_and_diff({"INSTANCE_PATH": str(tmp_path)})
    ddl = (
        sqlite3.connect(tmp_path / "wechat_service.db")
        .execute("SELECT sql FROM sqlite_master WHERE name = 'callback_inbox'")
        .fetchone()[0]
    )
    assert "'processing'" in ddl
    merchants = (
        sqlite3.connect(tmp_path / "wechat_service.db")
        .execute("SELECT sql FROM sqlite_master WHERE name = 'merchants'")
        .fetchone()[0]
    )
    assert "'alipay'" in merchants
