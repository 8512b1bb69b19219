"""Restore in place, in one transaction readers wait for: for `append`, and for tables
a swap cannot replace (`common.swap_check`). `replace` empties the tables (TRUNCATE, or
DELETE where another table's foreign key forbids it) and builds their secondary indexes
again after the load, as pg_restore does."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import first_line, rollback_quietly, table_identifier
from common.exceptions import RestoreError, VerifyError
from common.load_file import load_file
from common.manifest import SetRef
from common.table_schema import create_statements, description_to_create


class Step:
    """What the restore is doing, for its error message."""

    def __init__(self, now: str) -> None:
        self.now = now


def restore_in_place(
    conn: Connection, ref: SetRef, manifest: dict[str, Any], tables: dict[str, Any], mode: str
) -> tuple[dict[str, int], list[str]]:
    """Load into the live tables in one transaction: `replace` empties them (TRUNCATE, or
    DELETE where another table's foreign key forbids it) and rebuilds their indexes after."""
    step = Step("the tables")
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            created, build_later = _create_missing(conn, cur, manifest, tables, step)
            if mode == "replace":
                existing = [t for t in tables if t not in created]
                step.now = "emptying the tables"
                _empty(cur, existing)
                build_later = _drop_indexes(cur, existing) + build_later
            restored = {}
            for step.now, entry in tables.items():
                restored[step.now] = load_file(cur, ref, step.now, entry)
            # As pg_restore does: one bulk build per index and one validation per key is far
            # faster than maintaining them row by row; a violation still aborts everything.
            step.now = "constraints and indexes"
            for statement in build_later:
                cur.execute(statement)
        conn.commit()
    except RestoreError:
        rollback_quietly(conn)
        raise
    except (psycopg2.Error, OSError) as exc:
        rollback_quietly(conn)
        raise RestoreError(f"{step.now}: restore failed, nothing was restored: {first_line(exc)}") from exc
    finally:
        if not conn.closed:
            conn.autocommit = True
    return restored, created


def _empty(cur, tables: list[str]) -> None:
    """TRUNCATE leaves no dead rows; another table's foreign key forbids it, then DELETE."""
    if not tables:
        return
    cur.execute("SAVEPOINT empty")
    try:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(table_identifier, tables))))
    except psycopg2.errors.FeatureNotSupported:
        cur.execute("ROLLBACK TO SAVEPOINT empty")
        # Referencing tables first, so no foreign key objects to the order.
        for table in reversed(tables):
            cur.execute(sql.SQL("DELETE FROM {}").format(table_identifier(table)))


def _drop_indexes(cur, tables: list[str]) -> list[sql.Composable]:
    """Drop the indexes no constraint uses; the statements that build them again. The
    definitions are the server's own (`pg_get_indexdef`) for indexes of the live tables,
    never text from a backup directory."""
    rebuild = []
    for table in tables:
        cur.execute(
            "SELECT n.nspname, c.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
            "JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE x.indrelid = to_regclass(%s) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = x.indexrelid)",
            (table_identifier(table).as_string(cur.connection),),
        )
        for namespace, index, definition in cur.fetchall():
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(namespace, index)))
            rebuild.append(sql.SQL(definition))
    return rebuild


def _create_missing(
    conn: Connection, cur, manifest: dict[str, Any], tables: dict[str, Any], step: Step
) -> tuple[list[str], list[sql.Composable]]:
    """Create the tables that do not exist; their names, and the statements to run after
    the load (keys and indexes, then foreign keys, once every key they reference exists)."""
    created, deferred, foreign_keys = [], [], []
    for step.now, entry in tables.items():
        cur.execute("SELECT to_regclass(%s)", (table_identifier(step.now).as_string(conn),))
        if cur.fetchone()[0] is not None:
            continue
        description = description_to_create(step.now, manifest, entry)
        try:
            columns = [c[0] for c in entry["columns"]]
            made = create_statements(conn, step.now, description, columns, list(tables))
        except VerifyError as exc:
            raise RestoreError(f"{exc}; nothing was restored") from None
        cur.execute(made.create)
        deferred += made.indexes + made.keys
        foreign_keys += made.foreign
        created.append(step.now)
    return created, deferred + foreign_keys
