"""Restore a verified backup set with COPY FROM: every table or none."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common import staging
from common.compression import open_checked
from common.config import RestoreSettings, Settings, load_settings
from common.db import first_line, rollback_quietly, table_identifier
from common.exceptions import RestoreError, VerifyError
from common.formats import DEFAULT as DEFAULT_FORMAT
from common.formats import file_format
from common.manifest import SetRef, locate, verify_set
from common.table_schema import create_statements

MODES = ("replace", "append")
COPY_CHUNK = 1 << 20  # psycopg2 reads 8 KiB per call by default


class RestoreResult(TypedDict):
    manifest: str
    mode: str
    strategy: str
    tables: dict[str, int]
    created: list[str]
    duration: float


# Two restores into one database would race for the staging tables' names.
_RESTORE_LOCK = 0x7665_6374_7273  # pg_advisory_lock key, any constant of our own


def restore_set(
    conn: Connection,
    path: SetRef | Path,
    mode: str = "replace",
    settings: Settings | None = None,
    *,
    jobs: int | None = None,
    connect: Callable[[], Connection] | None = None,
) -> RestoreResult:
    """Verify the set at `path` (its signature too, with `VECTOR_SIGNING_KEY`), then
    restore the configured tables (`VECTOR_SUPPORTED_TABLES`, in that order: collection
    first) and nothing else. Either every table is restored or nothing is.

    The manifest must list exactly those tables. Missing tables are created from the
    manifest's description of them (`common.table_schema`: composed, checked, never SQL
    text from the file), after `CREATE EXTENSION IF NOT EXISTS vector`.

    `replace` loads staging tables and swaps them in (`common.staging`): searches keep
    answering from the old rows until one short transaction. A table that cannot be
    swapped (`common.swap_check`) is emptied and loaded in place, in one transaction that
    readers wait for; `append` always loads in place. `jobs` connections from `connect`
    load a staging table's file together.
    """
    if mode not in MODES:
        raise RestoreError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    started = time.time()
    settings = settings or load_settings()
    ref = locate(path, settings.vector.backup_temp_suffix)
    # COPY parses the rows and each file is hashed as COPY reads it: counts and sha256
    # are compared below, before anything commits, so each file is read once.
    manifest = verify_set(ref, deep=False, signing_key=settings.signing_key, hash_files=False)
    tables = _configured_tables(ref, manifest, settings.vector.supported_tables)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_RESTORE_LOCK,))
        if not cur.fetchone()[0]:
            raise RestoreError("another restore into this database is running; nothing was restored")
        # Before reading any table description: the types it names must exist.
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    try:
        try:
            staged = staging.plan(conn, tables, manifest) if mode == "replace" else "append"
        except psycopg2.Error as exc:
            raise RestoreError(f"reading the tables failed, nothing was restored: {first_line(exc)}") from exc
        if isinstance(staged, str):
            restored, created = _in_place(conn, ref, manifest, tables, mode)
            strategy = "in place" if mode == "append" else f"in place ({staged})"
        else:
            restored = _swapped(conn, ref, tables, staged, settings.restore, jobs, connect)
            created, strategy = [s.table for s in staged if s.oid is None], "swap"
    finally:
        if not conn.closed:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_RESTORE_LOCK,))
    return RestoreResult(
        manifest=ref.manifest,
        mode=mode,
        strategy=strategy,
        tables=restored,
        created=created,
        duration=round(time.time() - started, 3),
    )


def _swapped(
    conn: Connection,
    ref: SetRef,
    tables: dict[str, Any],
    staged: list[staging.Staged],
    how: RestoreSettings,
    jobs: int | None,
    connect: Callable[[], Connection] | None,
) -> dict[str, int]:
    step = _Step("the staging tables")
    try:
        staging.drop_leftovers(conn, staged)
        staging.create(conn, staged)
        restored = {}
        for s in staged:
            step.now = s.table
            with conn.cursor() as cur:
                restored[s.table] = _load(cur, ref, s.table, tables[s.table], into=s.stage)
        step.now = "keys and indexes"
        staging.build(conn, staged, how.maintenance_work_mem, how.parallel_workers)
        step.now = "the swap"
        staging.swap(conn, staged, how.lock_timeout_s, how.swap_wait_s)
    except RestoreError as exc:
        staging.drop(conn, staged)
        raise RestoreError(f"{exc}; the store still serves its old rows") from None
    except (psycopg2.Error, OSError) as exc:
        staging.drop(conn, staged)
        raise RestoreError(
            f"{step.now}: restore failed, nothing was restored, the store still serves its old rows: "
            f"{first_line(exc)}"
        ) from exc
    return restored


def _in_place(
    conn: Connection, ref: SetRef, manifest: dict[str, Any], tables: dict[str, Any], mode: str
) -> tuple[dict[str, int], list[str]]:
    """Load into the live tables in one transaction: `replace` empties them (TRUNCATE, or
    DELETE where another table's foreign key forbids it) and rebuilds their indexes after."""
    step = _Step("the tables")
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
                restored[step.now] = _load(cur, ref, step.now, entry)
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


class _Step:
    """What the restore is doing, for its error message."""

    def __init__(self, now: str) -> None:
        self.now = now


def _configured_tables(ref: SetRef, manifest: dict[str, Any], configured: tuple[str, ...]) -> dict[str, Any]:
    """The manifest's entries for exactly the configured tables, in their order."""
    listed = set(manifest["tables"])
    if listed != set(configured):
        extra = sorted(listed - set(configured))
        absent = sorted(set(configured) - listed)
        raise RestoreError(
            f"{ref.manifest} lists {', '.join(map(repr, extra)) or 'no other table'} beyond "
            f"VECTOR_SUPPORTED_TABLES and lacks {', '.join(absent) or 'none of them'}; restore only "
            "ever touches the configured tables; nothing was restored"
        )
    return {table: manifest["tables"][table] for table in configured}


def _create_missing(
    conn: Connection, cur, manifest: dict[str, Any], tables: dict[str, Any], step: _Step
) -> tuple[list[str], list[sql.Composable]]:
    """Create the tables that do not exist; their names, and the statements to run after
    the load (keys and indexes, then foreign keys, once every key they reference exists)."""
    created, deferred, foreign_keys = [], [], []
    for step.now, entry in tables.items():
        cur.execute("SELECT to_regclass(%s)", (table_identifier(step.now).as_string(conn),))
        if cur.fetchone()[0] is not None:
            continue
        if manifest["format_version"] < 2 or "schema" not in entry:
            raise RestoreError(
                f"{step.now}: missing, and this format {manifest['format_version']} manifest "
                "describes it only as SQL text, which restore never runs; create the table, "
                "then restore into it"
            )
        try:
            columns = [c[0] for c in entry["columns"]]
            create, later, foreign = create_statements(conn, step.now, entry["schema"], columns, list(tables))
        except VerifyError as exc:
            raise RestoreError(f"{exc}; nothing was restored") from None
        cur.execute(create)
        deferred += later
        foreign_keys += foreign
        created.append(step.now)
    return created, deferred + foreign_keys


def _check_types(cur, table: str, target: sql.Composable, columns: list[list[str]], fmt: Any) -> None:
    """A binary file holds each value in its column type's own representation: refuse a
    target whose columns have other types, before COPY would misread them."""
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (target.as_string(cur.connection),),
    )
    target = dict(cur.fetchall())
    differ = [
        f"{name} is {kind} in the backup but {target.get(name, 'missing')} here"
        for name, kind in columns
        if target.get(name) != kind
    ]
    if differ:
        raise RestoreError(
            f"{table}: {'; '.join(differ)}; a {fmt.description} backup restores only into the "
            "column types it was taken from; nothing was restored"
        )


def _load(cur, ref: SetRef, table: str, entry: dict[str, Any], into: sql.Composable | None = None) -> int:
    """COPY one file into `table` (or its staging table `into`); the rows loaded,
    checked against the manifest.

    The file is read once, hashed as COPY reads it: a file swapped after the set was
    verified is caught here, before anything commits."""
    fmt = file_format(entry.get("format", DEFAULT_FORMAT))  # checked by verify_set
    target = into or table_identifier(table)
    if fmt.exact_types:
        _check_types(cur, table, target, entry["columns"], fmt)
    copy = fmt.copy_from(target, [c[0] for c in entry["columns"]])
    with ref.storage.open(entry["file"]) as raw:
        data, hashed = open_checked(raw, entry["file"])
        cur.copy_expert(copy, data, size=COPY_CHUNK)
        digest, size = hashed.finish()
    if (digest, size) != (entry["sha256"], entry["bytes"]):
        raise RestoreError(
            f"{table}: {entry['file']} does not match its sha256 (changed or damaged); nothing was restored"
        )
    if cur.rowcount != entry["rows"]:
        raise RestoreError(f"{table}: restored {cur.rowcount} rows, the manifest says {entry['rows']}")
    return cur.rowcount
