"""Baselines for bench/callbacks.py, served by gunicorn with the same settings as the service.

* ``hello``: a bare Flask view.
* ``same_io``: a bare Flask view doing the I/O a callback cannot avoid: one Redis ``SET NX`` and
  one committed row insert, through the same drivers (redis-py, SQLAlchemy + psycopg pool).
"""

from __future__ import annotations

import os
import uuid

import redis
import sqlalchemy as sa
from flask import Flask, request

metadata = sa.MetaData()
rows = sa.Table(
    "bench_rows",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("key", sa.String(64), unique=True),
    sa.Column("body", sa.Text),
)


def hello() -> Flask:
    app = Flask("hello")

    @app.post("/hello")
    def view() -> str:
        request.get_data()
        return "success"

    return app


def same_io() -> Flask:
    app = Flask("same_io")
    engine = sa.create_engine(os.environ["BENCH_DATABASE_URL"], pool_pre_ping=True)
    conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    @app.post("/same-io")
    def view() -> str:
        body = request.get_data()
        key = uuid.uuid4().hex
        conn.set(f"bench:{key}", b"1", nx=True, ex=900)
        with engine.begin() as db:
            db.execute(rows.insert().values(key=key, body=body.decode()))
        return "success"

    return app


def commit_one() -> Flask:
    """The unavoidable work of a payment notification: one committed row insert."""
    app = Flask("commit_one")
    engine = sa.create_engine(os.environ["BENCH_DATABASE_URL"], pool_pre_ping=True)

    @app.post("/commit-one")
    def view() -> tuple[str, int]:
        body = request.get_data()
        with engine.begin() as db:
            db.execute(rows.insert().values(key=uuid.uuid4().hex, body=body.decode()))
        return "", 204

    return app
