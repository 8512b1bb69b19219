"""PostgreSQL connections and identifiers; driver errors become the project's own here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import make_dsn, parse_dsn

from common.exceptions import (
    BackupError,
    ConfigurationError,
    DatabaseUnavailableError,
    PermissionDeniedError,
    RestoreError,
    StorageError,
    TableNotFoundError,
)

APPLICATION_NAME = "pgvector-backup"
T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseTarget:
    """Where to connect. The password is kept out of `repr`, `describe()` and `identity`."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # A run's connections carry its id here, so a cancel can find every backend of it.
    application_name: str = APPLICATION_NAME

    @classmethod
    def from_url(cls, url: str) -> DatabaseTarget:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("the database URL must start with postgresql://")
        try:
            params = parse_dsn(url)
        except psycopg2.ProgrammingError:
            raise ConfigurationError("the database URL could not be parsed") from None
        return cls.from_parts(
            host=params.pop("host", "localhost"),
            port=int(params.pop("port", 5432)),
            dbname=params.pop("dbname", "postgres"),
            user=params.pop("user", "postgres"),
            password=params.pop("password", None) or None,
            **params,
        )

    @classmethod
    def from_parts(cls, host, port, dbname, user, password=None, **options) -> DatabaseTarget:
        return cls(host, int(port), dbname, user, password, tuple(sorted(options.items())))

    @property
    def identity(self) -> dict[str, str | int]:
        """What names this database in results, logs and lock keys: never the password."""
        return {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user}

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def dsn(self) -> str:
        return make_dsn(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
            **dict(self.options),
        )

    def redact(self, text: str) -> str:
        """`text` with the password replaced, for messages built from driver errors."""
        if self.password:
            text = text.replace(self.password, "***")
        return text


def connect(target: DatabaseTarget, *, autocommit: bool = True) -> Connection:
    """Open a connection or raise `DatabaseUnavailableError` naming the database, not the password."""
    try:
        timeout = dict(target.options).get("connect_timeout", 10)
        conn = psycopg2.connect(
            target.dsn(), application_name=target.application_name, connect_timeout=timeout
        )
    except psycopg2.Error as exc:
        reason = target.redact(first_line(exc))
        raise DatabaseUnavailableError(f"cannot connect to {target.describe()}: {reason}") from None
    conn.autocommit = autocommit
    return conn


def run_application_name(run_id: str) -> str:
    """What a run's connections call themselves (at most 63 bytes, as PostgreSQL keeps)."""
    return f"{APPLICATION_NAME} run {run_id}"[:63]


def cancel_backends(target: DatabaseTarget, application_name: str) -> int:
    """Cancel the statement of every backend calling itself `application_name` (a COPY
    stops at once with "canceling statement due to user request"); how many there were."""
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def table_identifier(table: str) -> sql.Identifier:
    """Quote `table` or `schema.table` as an identifier; reject anything else."""
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigurationError(f"invalid table name {table!r}: use table or schema.table")
    return sql.Identifier(*parts)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def table_error(table: str, step: str, exc: Exception, connection_lost: bool = False) -> BackupError:
    """Turn a driver or OS error met while working on `table` into a clear per-table error."""
    reason = first_line(exc)
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        return TableNotFoundError(f"{table}: table does not exist")
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return PermissionDeniedError(f"{table}: permission denied while {step}: {reason}")
    # A local file error is the cause even when it leaves the COPY stream unusable.
    if isinstance(exc, StorageError):  # its message names the location, the call and the reason
        return BackupError(f"{table}: storage error while {step}: {reason}")
    if isinstance(exc, OSError):
        return BackupError(f"{table}: file error while {step}: {reason}")
    # A backend killed mid-COPY may surface as a bare DatabaseError from libpq.
    if connection_lost or isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return BackupError(f"{table}: database connection lost while {step}: {reason}")
    return BackupError(f"{table}: {step} failed: {reason}")


@contextlib.contextmanager
def opened(
    open_one: Callable[[], Connection] | None, count: int, *, autocommit: bool
) -> Iterator[list[Connection]]:
    """`count` more connections from `open_one` (none without it), rolled back and closed
    on the way out."""
    conns: list[Connection] = []
    try:
        for _ in range(count if open_one is not None else 0):
            conns.append(open_one())
            conns[-1].autocommit = autocommit
        yield conns
    finally:
        for conn in conns:
            rollback_quietly(conn)
            conn.close()


def rollback_quietly(conn: Connection) -> None:
    """Roll back whatever is open; a dead connection has nothing left to roll back."""
    if not conn.closed:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()


def begin_snapshot(conn: Connection) -> None:
    """Start one REPEATABLE READ, READ ONLY transaction; a non-autocommit `conn` must be idle."""
    with conn.cursor() as cur:
        if conn.autocommit:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:  # psycopg2 sends BEGIN itself; this must be the transaction's first statement
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def end_snapshot(conn: Connection) -> None:
    if conn.autocommit:
        with conn.cursor() as cur:
            cur.execute("COMMIT")
    else:
        conn.commit()


def end_transaction_quietly(conn: Connection) -> None:
    """Roll back a driver-managed or a hand-begun transaction; nothing if the link is dead."""
    rollback_quietly(conn)
    if not conn.closed and conn.autocommit:
        with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
            cur.execute("ROLLBACK")


def is_alive(conn: Connection) -> bool:
    """Whether the server still answers on `conn` (after any failed transaction is rolled back)."""
    if conn.closed:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False


def server_info(target: DatabaseTarget) -> dict[str, str | None]:
    """PostgreSQL and pgvector versions, for a manifest; None values if unreachable."""
    try:
        conn = connect(target)
    except DatabaseUnavailableError:
        return {"server_version": None, "pgvector_version": None}
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('server_version'), "
                "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
            )
            server, pgvector = cur.fetchone()
        return {"server_version": server, "pgvector_version": pgvector}
    finally:
        conn.close()


def table_fingerprint(conn: Connection, table: str) -> str:
    """An order-independent digest of every row ("rows:sum of 60-bit md5 prefixes").

    Any insert, update or delete changes it (barring a 60-bit collision); equal contents
    in any physical order give the same value.
    """
    query = sql.SQL(
        "SELECT count(*)::text || ':' || "
        "coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text FROM {} AS t"
    ).format(table_identifier(table))
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def retry_while_locked(conn: Connection, attempt: Callable[[], T], wait_s: float, refusal: str) -> T:
    """`attempt()` then commit, in a transaction of `conn`; while it fails on its
    `lock_timeout` (others hold the tables), rolled back and tried again with backoff for
    `wait_s`, then `RestoreError(refusal)`. Short lock waits let readers through between
    attempts, where one long wait would queue them all behind it."""
    deadline = time.monotonic() + wait_s
    pause = 0.1
    while True:
        try:
            result = attempt()
            conn.commit()
            return result
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            if time.monotonic() + pause > deadline:
                raise RestoreError(refusal) from None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
