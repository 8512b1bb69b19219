"""Restore by swapping, as a careful DBA would by hand: load staging tables beside the
live ones with no secondary index, build their keys and indexes in bulk, then drop the
live tables and rename the staging ones into their place in one short transaction.

Until that transaction the store answers searches from its old rows; a failure at any
earlier point drops the staging tables and leaves the live ones untouched. A crash
leaves staging tables behind, marked by their comment; the next restore drops them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import retry_while_locked, table_identifier
from common.exceptions import RestoreError, VerifyError
from common.swap_check import swap_refusal
from common.table_schema import (
    Relations,
    TableStatements,
    create_statements,
    description_to_create,
    read_schema,
)

log = logging.getLogger(__name__)
MARK = "pgvector-backup: a restore's staging table; dropped when the restore ends"
SUFFIX = "__restoring"
# Privileges GRANT may name; an ACL entry is composed from these words only.
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN")
LIKE = sql.SQL(
    "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION "
    "INCLUDING COMMENTS INCLUDING GENERATED"
)


@dataclass
class Staged:
    """One configured table's staging table and what turns it into the live one."""

    table: str
    namespace: str
    name: str  # the live table's own name
    oid: int | None  # the live table's, if it exists
    description: dict[str, Any]
    made: TableStatements | None = None  # its CREATE is used only if the table is missing
    renames: dict[str, str] = field(default_factory=dict)  # staging index name -> live name

    @property
    def live(self) -> sql.Identifier:
        return sql.Identifier(self.namespace, self.name)

    @property
    def stage_name(self) -> str:
        return self.name[: 63 - len(SUFFIX)] + SUFFIX

    @property
    def stage(self) -> sql.Identifier:
        return sql.Identifier(self.namespace, self.stage_name)

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.description["columns"]]


class _StageRelations(Relations):
    """Statements composed for the staging tables: other names for keys and indexes
    (a relation name is unique in its schema while both tables exist)."""

    def __init__(self, staged: dict[str, Staged], current: Staged) -> None:
        self.staged, self.current = staged, current

    def table(self, name: str) -> sql.Composed:
        return sql.Composed([self.staged[name].stage])

    def index(self, name: str) -> str:
        known = {live: temp for temp, live in self.current.renames.items()}
        if name not in known:
            known[name] = f"{self.current.stage_name[:55]}_{len(self.current.renames)}"
            self.current.renames[known[name]] = name
        return known[name]


def plan(conn: Connection, tables: dict[str, Any], manifest: dict[str, Any]) -> list[Staged] | str:
    """The staging tables for `tables` (the manifest's entries, collection first), or why
    they cannot be swapped in (then the restore runs in place)."""
    staged = {table: _locate(conn, table) for table in tables}
    oids = {s.oid for s in staged.values() if s.oid is not None}
    for table, entry in tables.items():
        s = staged[table]
        if s.oid is not None:
            s.description = read_schema(conn, table)
            refusal = swap_refusal(conn, s.oid, s.description, oids)
            if refusal:
                return f"{table}: {refusal}"
        else:
            s.description = description_to_create(table, manifest, entry)
        try:
            s.made = create_statements(
                conn, table, s.description, s.columns, tuple(tables), into=_StageRelations(staged, s)
            )
        except VerifyError as exc:
            if s.oid is None:
                raise RestoreError(f"{exc}; nothing was restored") from None
            return str(exc)
    if len({s.stage_name for s in staged.values()}) < len(staged):
        return "two tables' staging names would be the same"
    return list(staged.values())


def _locate(conn: Connection, table: str) -> Staged:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            (table_identifier(table).as_string(conn),),
        )
        found = cur.fetchone()
        if found:
            return Staged(table, found[1], found[2], found[0], {})
        parts = table.split(".")
        if len(parts) == 1:
            cur.execute("SELECT current_schema()")
            parts.insert(0, cur.fetchone()[0])
        return Staged(table, parts[0], parts[1], None, {})


def drop_leftovers(conn: Connection, staged: list[Staged]) -> None:
    """Drop the staging tables a crashed restore left; refuse if a table that is not a
    staging table has a staging table's name."""
    with conn.cursor() as cur:
        for s in staged:
            cur.execute(
                "SELECT obj_description(c, 'pg_class') FROM to_regclass(%s) c WHERE c IS NOT NULL",
                (s.stage.as_string(conn),),
            )
            found = cur.fetchone()
            if found and found[0] != MARK:
                raise RestoreError(
                    f"{s.table}: a table named {s.stage_name} exists and is not a restore's "
                    "staging table; rename it, then restore again; nothing was restored"
                )
    drop(conn, staged)


def create(conn: Connection, staged: list[Staged]) -> None:
    """Create the staging tables, empty and with no key or index yet."""
    with conn.cursor() as cur:
        for s in staged:
            if s.oid is None:
                cur.execute(s.made.create)
            else:
                cur.execute("SELECT relpersistence, reloptions FROM pg_class WHERE oid = %s", (s.oid,))
                persistence, options = cur.fetchone()
                unlogged = sql.SQL("UNLOGGED " if persistence == "u" else "")
                cur.execute(sql.SQL("CREATE {}TABLE {} (LIKE {} {})").format(unlogged, s.stage, s.live, LIKE))
                for option in options or []:
                    key, value = option.split("=", 1)
                    cur.execute(
                        sql.SQL("ALTER TABLE {} SET ({} = {})").format(
                            s.stage, sql.Identifier(key), sql.Literal(value)
                        )
                    )
            cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(s.stage, sql.Literal(MARK)))


def build(
    conn: Connection, staged: list[Staged], memory: str, workers: int, extra: list[Connection] = ()
) -> None:
    """Every index once, after the load (as pg_restore does), and statistics (so the
    planner knows the new tables at once), side by side on `conn` and the `extra`
    connections; then the keys made of those indexes and the foreign keys between the
    staging tables."""
    connections = [conn, *extra]
    for c in connections:
        with c.cursor() as cur:
            cur.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
            cur.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
    # ANALYZE reads beside index builds (its lock does not conflict with theirs).
    analyze = [sql.SQL("ANALYZE {}").format(s.stage) for s in staged]
    _side_by_side(connections, [st for s in staged for st in s.made.indexes] + analyze)
    _side_by_side([conn], [st for s in staged for st in s.made.keys + s.made.foreign])


def _side_by_side(connections: list[Connection], statements: list[sql.Composed]) -> None:
    """Run `statements` in order, each on the first free connection; the first error
    cancels the others' statements and is raised."""
    todo, lock, errors = list(reversed(statements)), threading.Lock(), []

    def work(conn: Connection) -> None:
        with conn.cursor() as cur:
            while True:
                with lock:
                    if errors or not todo:
                        return
                    statement = todo.pop()
                started = time.monotonic()
                try:
                    cur.execute(statement)
                except psycopg2.Error as exc:
                    with lock:
                        errors.append(exc)
                    for other in connections:
                        if other is not conn:
                            other.cancel()
                    return
                log.info(
                    "restore: %s took %.2fs", statement.as_string(conn)[:120], time.monotonic() - started
                )

    threads = [threading.Thread(target=work, args=(c,)) for c in connections[1:]]
    for thread in threads:
        thread.start()
    work(connections[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def swap(conn: Connection, staged: list[Staged], lock_timeout_s: float, wait_s: float) -> None:
    """Drop the live tables and rename the staging ones into their place, in one
    transaction that waits at most `lock_timeout_s` for the tables at a time (readers
    queue behind a waiting lock), retried for `wait_s`."""
    conn.autocommit = False
    try:
        retry_while_locked(
            conn,
            lambda: _swap_once(conn, staged, lock_timeout_s),
            wait_s,
            f"the live tables stayed in use for {wait_s:g}s (long queries or open "
            "transactions hold them), so they were not swapped; nothing was restored",
        )
    finally:
        if not conn.closed:
            conn.rollback()
            conn.autocommit = True


def _swap_once(conn: Connection, staged: list[Staged], lock_timeout_s: float) -> None:
    live = [s for s in staged if s.oid is not None]
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
        if live:
            cur.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(s.live for s in live)
                )
            )
        keep = {s.table: _attributes(cur, s) for s in live}
        # Referencing tables first; no CASCADE: anything depending on a table that
        # appeared since the plan makes the DROP fail and the swap roll back.
        for s in reversed(live):
            cur.execute(sql.SQL("DROP TABLE {}").format(s.live))
        for s in staged:
            cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(s.stage, sql.Identifier(s.name)))
            for temp, name in s.renames.items():
                cur.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(s.namespace, temp), sql.Identifier(name)
                    )
                )
            for statement in keep.get(s.table, []):
                cur.execute(statement)
            if s.table not in keep:
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(s.live))


def _attributes(cur, s: Staged) -> list[sql.Composed]:
    """What the live table carries that the new one must keep: owner, grants, comment."""
    cur.execute(
        "SELECT pg_get_userbyid(relowner), pg_get_userbyid(relowner) = current_user, "
        "obj_description(oid, 'pg_class') FROM pg_class WHERE oid = %s",
        (s.oid,),
    )
    owner, mine, comment = cur.fetchone()
    cur.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
        "a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = %s AND a.grantee <> c.relowner",
        (s.oid,),
    )
    grants = cur.fetchall()
    statements = [sql.SQL("COMMENT ON TABLE {} IS {}").format(s.live, sql.Literal(comment))]
    if not mine:
        statements.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(s.live, sql.Identifier(owner)))
    for grantee, privilege, grantable in grants:
        if privilege not in PRIVILEGES:
            raise RestoreError(f"{s.table}: grants privilege {privilege!r}, which restore cannot copy")
        statements.append(
            sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                sql.SQL(privilege),
                s.live,
                sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return statements


def drop(conn: Connection, staged: list[Staged]) -> None:
    """Drop the staging tables (only tables carrying the mark); best effort: after a
    failure the connection may be gone, and the next restore drops what is left."""
    try:
        with conn.cursor() as cur:
            for s in reversed(staged):
                cur.execute(
                    "SELECT obj_description(c, 'pg_class') = %s FROM to_regclass(%s) c WHERE c IS NOT NULL",
                    (MARK, s.stage.as_string(conn)),
                )
                if (cur.fetchone() or [False])[0]:
                    cur.execute(sql.SQL("DROP TABLE {}").format(s.stage))
    except psycopg2.Error:
        pass
