"""Restore a verified backup set with COPY FROM, all tables in one transaction."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TypedDict

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.compression import open_checked
from common.config import Settings, load_settings
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
    tables: dict[str, int]
    created: list[str]
    duration: float


def restore_set(
    conn: Connection, path: SetRef | Path, mode: str = "replace", settings: Settings | None = None
) -> RestoreResult:
    """Verify the set at `path` (its signature too, with `VECTOR_SIGNING_KEY`), then
    restore the configured tables (`VECTOR_SUPPORTED_TABLES`, in that order: collection
    first) and nothing else.

    The manifest must list exactly those tables. Missing tables are created from the
    manifest's description of them (`common.table_schema`: composed, checked, never SQL
    text from the file), after `CREATE EXTENSION IF NOT EXISTS vector`. `replace` deletes
    the tables' rows first (DELETE, inside the same transaction); `append` adds to them.
    Either every table is restored or nothing is.
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
    step = _Step("the extension")
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            created, build_later = _create_missing(conn, cur, manifest, tables, step)
            if mode == "replace":
                # Referencing tables first, so no foreign key objects to the order.
                for step.now in reversed(tables):
                    cur.execute(sql.SQL("DELETE FROM {}").format(table_identifier(step.now)))
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
    return RestoreResult(
        manifest=ref.manifest,
        mode=mode,
        tables=restored,
        created=created,
        duration=round(time.time() - started, 3),
    )


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


def _check_types(cur, table: str, columns: list[list[str]], fmt: Any) -> None:
    """A binary file holds each value in its column type's own representation: refuse a
    target whose columns have other types, before COPY would misread them."""
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (table_identifier(table).as_string(cur.connection),),
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


def _load(cur, ref: SetRef, table: str, entry: dict[str, Any]) -> int:
    """COPY one file into `table`; the rows loaded, checked against the manifest.

    The file is read once, hashed as COPY reads it: a file swapped after the set was
    verified is caught here, before anything commits."""
    fmt = file_format(entry.get("format", DEFAULT_FORMAT))  # checked by verify_set
    if fmt.exact_types:
        _check_types(cur, table, entry["columns"], fmt)
    copy = fmt.copy_from(table_identifier(table), [c[0] for c in entry["columns"]])
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
