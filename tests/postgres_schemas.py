"""PostgreSQL for tests: each store gets a fresh schema of the test database, dropped afterwards.

``TEST_DATABASE_URL`` names the database (default: the local server, trust auth, database
``test``). Tests that need it skip, saying why, when it does not answer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def unavailable() -> str:
    """Why PostgreSQL cannot be used for tests, or "" when it answers."""
    params = conninfo_to_dict(TEST_DATABASE_URL)
    try:
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=3):
            return ""
    except psycopg.Error as exc:
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        return f"PostgreSQL at {where} (TEST_DATABASE_URL) does not answer: {type(exc).__name__}"


def require_postgres() -> None:
    if reason := unavailable():
        pytest.skip(reason)


def connect() -> psycopg.Connection[tuple[object, ...]]:
    """A direct connection to the test database (autocommit), for setting up and looking in."""
    return psycopg.connect(TEST_DATABASE_URL, autocommit=True, connect_timeout=3)


def in_schema(url: str, schema: str, **params: object) -> str:
    """``url`` with ``schema`` as its search_path (and any other libpq ``params``)."""
    return make_conninfo(url, options=f"-csearch_path={schema}", **params)


@contextlib.contextmanager
def fresh_schema(url: str = TEST_DATABASE_URL) -> Iterator[str]:
    """The DSN of a new, empty schema of the test database; the schema is dropped afterwards,
    with everything in it. Skips the test when PostgreSQL does not answer."""
    require_postgres()
    schema = f"s_{uuid.uuid4().hex}"
    with connect() as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        # Named, so that a test can find the store's connections in pg_stat_activity.
        yield in_schema(url, schema, application_name=f"test-{schema}")
    finally:
        with connect() as db:
            # Connections a test left open in it (a store not closed) would hold the drop up.
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND application_name = %s",
                (f"test-{schema}",),
            )
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def schema_of(dsn: str) -> str:
    """The schema a DSN of `fresh_schema` points at."""
    return str(conninfo_to_dict(dsn)["options"]).removeprefix("-csearch_path=")


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh schema's DSN (import it into a test module to use it as a fixture)."""
    with fresh_schema() as dsn:
        yield dsn
