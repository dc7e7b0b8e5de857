"""The queue's database: where it is, whether it answers, its schema, and the procrastinate
App over it. Every database failure leaves here as one of the package's flat errors, so a
command prints one line, never a psycopg traceback."""

from __future__ import annotations

import os
import re

import procrastinate
import psycopg
from psycopg.conninfo import conninfo_to_dict

from orchestrator.errors import ConfigError, InfraError
from orchestrator.fleet.engine.jobs import register
from orchestrator.tunables import ENGINE_CONNECT_TIMEOUT_S

#: Where the DSN comes from when no --db is given.
DSN_ENV = "ORCH_DB_DSN"
#: Two workers starting on a fresh database must not both create the schema.
_SCHEMA_LOCK_KEY = 0x6D656D66  # "memf"
_LAB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_dsn(dsn: str | None) -> str:
    """The DSN given, else $ORCH_DB_DSN; a malformed one is bad input (exit 2)."""
    chosen = dsn or os.environ.get(DSN_ENV)
    if not chosen:
        raise ConfigError(f"no queue database: give --db DSN or set {DSN_ENV}")
    try:
        conninfo_to_dict(chosen)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad database DSN: {_first_line(exc)}", field="--db") from None
    return chosen


def queue_for_lab(lab: str) -> str:
    """One queue per lab site: only that site's workers reach its BMCs."""
    if not _LAB_NAME.match(lab):
        raise ConfigError(f"bad lab name {lab!r}: letters, digits, '.', '_' and '-' only", field="--lab")
    return f"lab.{lab}"


def prepare_database(dsn: str) -> None:
    """Check that the database answers and holds procrastinate's schema, creating it on an
    empty database (under an advisory lock: workers of several sites may start at once)."""
    try:
        with psycopg.connect(dsn, connect_timeout=int(ENGINE_CONNECT_TIMEOUT_S), autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_KEY,))
            present = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]
            if present is None:
                conn.execute(procrastinate.schema.SchemaManager.get_schema())
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_KEY,))
    except psycopg.Error as exc:
        raise InfraError(f"queue database {describe_dsn(dsn)}: {_first_line(exc)}") from None


def build_app(dsn: str, *, pool_size: int = 2) -> procrastinate.App:
    """The App with the case job registered. The psycopg pool is async; the sync calls of
    ``submit`` go through procrastinate's own sync connector over the same DSN."""
    connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=pool_size,
                                               kwargs={"connect_timeout": int(ENGINE_CONNECT_TIMEOUT_S)})
    app = procrastinate.App(connector=connector)
    register(app)
    return app


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    host = parts.get("host") or "local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{host}{port}/{parts.get('dbname', '')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
