"""Unbound extensions, bound in ``create_app``; nothing connects at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

import redis
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from marshmallow import Schema, fields
from rq import Queue
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, SessionTransaction
from webargs.flaskparser import FlaskParser

from wechat_service.errors import ErrorCode, _page, _wants_page

log = logging.getLogger(__name__)

# Deterministic constraint names keep Alembic autogenerate and SQLite batch mode stable.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING))

if TYPE_CHECKING:
    from flask_sqlalchemy.model import Model as _FsaModel
    from rq.types import FunctionReferenceType
    from sqlalchemy import Table
    from sqlalchemy.orm import DeclarativeBase

    class Model(_FsaModel, DeclarativeBase):
        """What ``db.Model`` is at run time, as mypy can see it: it cannot take an instance's
        attribute as a base class (python/mypy#8603)."""

        __table__: ClassVar[Table]  # every model here names its table, so it is a Table

else:
    Model = db.Model

migrate = Migrate(compare_type=True, render_as_batch=True)
csrf = CSRFProtect()


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    fields_ = fields.Dict(data_key="fields", required=True)


class ErrorResponseSchema(Schema):
    """The one error shape, as the OpenAPI document's default response."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class JsonApi(Api):
    """flask-smorest, answering errors in our one JSON shape: {"error": {"code", "message", "fields"}}."""

    ERROR_SCHEMA = ErrorResponseSchema

    def handle_http_exception(self, error: Any):  # type: ignore[no-untyped-def]
        from flask import jsonify

        if _wants_page():
            return _page(error.code or 500, error.name or "error", error.description or "")
        data = getattr(error, "data", None) or {}
        fields = data.get("messages", {})
        if isinstance(fields, dict) and len(fields) == 1 and next(iter(fields)) in ("json", "query", "form"):
            fields = next(iter(fields.values()))  # webargs nests by location; one location is the common case
        if not isinstance(fields, dict):  # e.g. ["Invalid JSON body."] for a body that is not an object
            fields = {"_schema": fields}
        invalid = error.code == 422 or (error.code == 400 and bool(fields))  # a schema refused the input
        code = ErrorCode.invalid_input if invalid else (error.name or "error").lower().replace(" ", "_")
        message = "the request has invalid fields" if invalid else error.description or error.name
        body = {"error": {"code": code, "message": message, "fields": fields}}
        resp = jsonify(body)
        resp.status_code = error.code or 500
        return resp


class _Parser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400


class ApiBlueprint(SmorestBlueprint):
    """flask-smorest's Blueprint answering invalid arguments with 400 (not webargs' 422), like
    every other invalid input; the OpenAPI document says 400 too."""

    ARGUMENTS_PARSER = _Parser()


QUEUE_NAMES = ("high", "default", "low")


class RedisMissingError(RuntimeError):
    """No REDIS_URL: only `wechat-service run` owns an embedded Redis."""


def init_redis(app: Flask) -> None:
    url = app.config.get("REDIS_URL")
    if not url:
        # Commands that need Redis ask for it; the rest (db upgrade, account list) work without.
        app.extensions["redis"] = None
        app.extensions["queues"] = {}
        return
    # Short timeouts: a hung Redis must not hold a callback past WeChat's 5 s (the database
    # still decides dedup). Workers open their own connection without a socket timeout, since
    # RQ's dequeue blocks for minutes.
    timeout = float(app.config.get("REDIS_TIMEOUT", 1.0))
    conn = redis.Redis.from_url(
        url, health_check_interval=30, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    app.extensions["redis"] = conn
    app.extensions["queues"] = {name: Queue(name, connection=conn) for name in QUEUE_NAMES}


def get_redis() -> redis.Redis:
    conn = current_app.extensions.get("redis")
    if conn is None:
        raise RedisMissingError(
            "REDIS_URL is not set. Start everything with `wechat-service run` (it owns an embedded "
            "Redis), or set REDIS_URL=redis://host:6379/0"
        )
    return conn


def get_queue(name: str = "default") -> Queue:
    get_redis()
    return current_app.extensions["queues"][name]


def after_commit(fn: Callable[[], Any], *, key: Hashable | None = None) -> None:
    """Run ``fn`` once the current transaction commits; drop it if the transaction rolls back.

    The one after-commit mechanism: notices, signals to running jobs, cache invalidation and
    enqueueing — never state that must stay consistent (that moves in the transaction). A later
    call with the same ``key`` replaces the earlier one (e.g. the last state of a campaign wins).
    """
    pending: dict[Hashable, Callable[[], Any]] = db.session.info.setdefault("after_commit", {})
    pending[key if key is not None else object()] = fn


def enqueue_after_commit(queue: str, func: FunctionReferenceType, *args: Any, **kwargs: Any) -> None:
    """Enqueue a job once the current transaction commits; drop it if it rolls back. ``func`` is a
    function or its dotted path, as RQ takes it."""
    get_redis()  # fail now, inside the request, rather than silently after commit
    after_commit(lambda: get_queue(queue).enqueue(func, *args, **kwargs))


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    pending = session.info.pop("after_commit", None)
    failures = []
    for fn in (pending or {}).values():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the others still run; the first is raised below
            log.exception("after-commit callback failed")
            failures.append(exc)
    if failures:
        raise failures[0]


@event.listens_for(Session, "after_transaction_end")
def _drop_after_commit(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without running them (a commit popped them first): it
    # rolled back, or the session closed. Not after_rollback, which fires only for a rollback
    # the DBAPI sees — not for a session joined to an outer transaction through a savepoint.
    if transaction.parent is None:
        session.info.pop("after_commit", None)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    module = type(dbapi_conn).__module__
    if module.startswith("sqlite3"):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
