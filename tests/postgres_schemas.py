"""PostgreSQL for tests: each store gets a fresh schema of the test database, dropped afterwards.

``TEST_DATABASE_URL`` names the database (default: the local server, trust auth, database
``test``); it is created when missing (from the server's ``postgres`` database). Tests that need
it skip, saying why (libpq's own first line: server down, database missing, ...), when it does
not answer.
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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (libpq's: "... failed: Connection refused",
    "... FATAL:  database "test" does not exist"), after its type."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def create_database(url: str) -> None:
    """Creates ``url``'s database when the server has none by that name, from the server's
    ``postgres`` database (which every server has). Another test process creating it at the
    same time is no error."""
    name = str(conninfo_to_dict(url).get("dbname") or "")
    if not name or name == "postgres":
        return
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True, connect_timeout=3) as db:
        if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        # Two creations at once: the loser gets duplicate_database, or a unique_violation on
        # pg_database's name index when both got past the check before either committed.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@functools.cache
def unavailable() -> str:
    """Why PostgreSQL cannot be used for tests, or "" when it answers (its database created
    first when missing)."""
    params = conninfo_to_dict(TEST_DATABASE_URL)
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    try:
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=3):
            return ""
    except psycopg.Error as exc:
        failed = exc
    try:
        create_database(TEST_DATABASE_URL)
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=3):
            return ""
    except psycopg.Error as again:
        # The first failure says why (server down, database missing, password refused, ...);
        # the second, when it says something else, why creating the database did not help.
        reason = first_line(failed)
        if str(again) != str(failed):
            reason += f"; then {first_line(again)}"
        return f"PostgreSQL at {where} (TEST_DATABASE_URL) does not answer: {reason}"


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
