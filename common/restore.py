"""Restore a verified backup set with COPY FROM: every table or none."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import psycopg2
import psycopg2.errors
from psycopg2.extensions import connection as Connection

from common import staging
from common.config import RestoreSettings, Settings, load_settings
from common.db import first_line, opened
from common.exceptions import RestoreError
from common.in_place import Step, restore_in_place
from common.load_file import load_file, loader_connections
from common.manifest import SetRef, locate, verify_set

MODES = ("replace", "append")
log = logging.getLogger(__name__)


class RestoreResult(TypedDict):
    manifest: str
    mode: str
    strategy: str
    tables: dict[str, int]
    loaders: dict[str, int]  # connections that loaded each table's file
    created: list[str]
    duration: float


# Two restores into one database would race for the staging tables' names, or replace
# collections in tables being swapped away.
_RESTORE_LOCK = 0x7665_6374_7273  # pg_advisory_lock key, any constant of our own


@contextlib.contextmanager
def restore_lock(conn: Connection) -> Iterator[None]:
    """Hold the database's restore lock on `conn` (in autocommit) for the block; raise
    `RestoreError` at once, having changed nothing, while another restore holds it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_RESTORE_LOCK,))
        if not cur.fetchone()[0]:
            raise RestoreError("another restore into this database is running; nothing was restored")
    try:
        yield
    finally:
        # A connection that died took its session's lock with it.
        if not conn.closed:
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_RESTORE_LOCK,))


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
    tables = configured_tables(ref, manifest, settings.vector.supported_tables)
    conn.autocommit = True
    with restore_lock(conn):
        with conn.cursor() as cur:
            # Before reading any table description: the types it names must exist.
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        try:
            staged = staging.plan(conn, tables, manifest) if mode == "replace" else "append"
        except psycopg2.Error as exc:
            raise RestoreError(f"reading the tables failed, nothing was restored: {first_line(exc)}") from exc
        if isinstance(staged, str):
            restored, created = restore_in_place(conn, ref, manifest, tables, mode)
            loaders = dict.fromkeys(restored, 1)
            strategy = "in place" if mode == "append" else f"in place ({staged})"
        else:
            restored, loaders = _swapped(conn, ref, tables, staged, settings.restore, jobs, connect)
            created, strategy = [s.table for s in staged if s.oid is None], "swap"
    return RestoreResult(
        manifest=ref.manifest,
        mode=mode,
        strategy=strategy,
        tables=restored,
        loaders=loaders,
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
) -> tuple[dict[str, int], dict[str, int]]:
    step = Step("the staging tables")
    try:
        staging.drop_leftovers(conn, staged)
        staging.create(conn, staged)
        restored, used = {}, {}
        for s in staged:
            step.now, entry = s.table, tables[s.table]
            with _timed(step), loader_connections(connect, jobs or how.jobs, entry) as loaders:
                with conn.cursor() as cur:
                    restored[s.table] = load_file(cur, ref, s.table, entry, into=s.stage, loaders=loaders)
                for loader in loaders:
                    loader.commit()
                used[s.table] = max(len(loaders), 1)
        step.now = "keys and indexes"
        with _timed(step), opened(connect, (jobs or how.jobs) - 1, autocommit=True) as builders:
            staging.build(conn, staged, how.maintenance_work_mem, how.parallel_workers, builders)
        step.now = "the swap"
        with _timed(step):
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
    return restored, used


@contextlib.contextmanager
def _timed(step: Step) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.info("restore: %s took %.2fs", step.now, time.monotonic() - started)


def configured_tables(ref: SetRef, manifest: dict[str, Any], configured: tuple[str, ...]) -> dict[str, Any]:
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
