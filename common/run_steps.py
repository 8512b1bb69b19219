"""The three steps of a run, as plain functions: back up a table, close the set, truncate.

The Celery tasks call exactly these; so can any other orchestrator or a test.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Callable
from typing import Any

from common.backup import TableBackup, backup_table, failed_backup, run_table_backup
from common.backup_log import append_backup_block, append_truncate_block
from common.config import Settings
from common.consistency import COLLECTION_TABLE, missing_collections
from common.db import connect, server_info
from common.exceptions import (
    BackupFailedError,
    RunFailedError,
    StorageError,
    TruncateError,
    TruncateRefusedError,
    VectorBackupError,
    VerifyError,
)
from common.manifest import SetRef, manifest_name, verify_set, write_manifest
from common.redis_conn import redis_client
from common.run_lock import RunLock
from common.run_result import RunRequest, VectorRunResult, aggregate_backups, verified_row_counts
from common.split import SplitBoard, SplitJob, merge_parts, remove_parts
from common.split.parts import abort_again
from common.storage import UnsafeFile, plain_name
from common.table_job import ProgressCallback, TableJob, backup_file_name
from common.truncate import truncate_tables

log = logging.getLogger(__name__)


def back_up_table(
    settings: Settings,
    request: RunRequest,
    table: str,
    on_progress: ProgressCallback | None = None,
    lock: RunLock | None = None,
    board: SplitBoard | None = None,
) -> TableBackup:
    """Back up `table` into the run's set; a failure is returned as the table's result.

    Each progress report also renews the run lock, so a long copy keeps it. With a
    `board`, this is one of the table's range-split tasks (`common.split`).
    """
    storage = settings.backup_storage(request["task_id"])

    def report(progress):
        if lock is not None:
            lock.renew()
        if on_progress is not None:
            on_progress(progress)

    # The run reserved its timestamp in this directory, so a file already bearing it was
    # written by an earlier attempt of this very task: one killed after its rename but
    # before its ack, and redelivered. Until the set has a manifest, that file is only a
    # leftover and the new attempt replaces it; a complete set is never overwritten.
    try:
        complete = storage.exists(manifest_name(request["timestamp"]))
    except StorageError as exc:  # the table's failure, as any other: the set fails clearly
        return failed_backup(table, f"{table}: {exc}", time.time())
    job = TableJob(
        table,
        storage,
        request["timestamp"],
        settings.vector,
        on_progress=report,
        fingerprint=request["truncate_requested"] and table in settings.vector.truncate_tables,
        replace=not complete,
    )
    if board is not None:
        return SplitJob(settings.database, board, job).run()
    return run_table_backup(settings.database, job)


def close_backup_set(
    settings: Settings, request: RunRequest, tables: list[TableBackup], lock: RunLock | None = None
) -> VectorRunResult:
    """Aggregate the set, log it, and raise `BackupFailedError` if any table failed.

    The run lock is released here unless a truncate follows that still needs it.
    """
    storage = settings.backup_storage(request["task_id"])
    # Every header task has ended when the chord body runs, so an upload of this set
    # still pending is one whose abort failed: dead, and billed until aborted.
    try:
        remove_parts(storage, request["timestamp"], settings.vector.backup_temp_suffix)
        storage.discard_pending(f"*_{glob.escape(request['timestamp'])}.*")
        _abort_split_uploads(settings, request, storage)
    except StorageError as exc:
        # An unreachable storage must not hide what happened to the run itself.
        log.warning("could not clear the leftovers of set %s: %s", request["timestamp"], exc)
    result = aggregate_backups(request, merge_parts(tables), storage, settings.database.identity)
    try:
        if not result["errors"]:
            _check_files_are_here(storage, result)
        if not result["errors"]:
            _make_consistent(settings, storage, result, lock)
        for info in result["tables_backed_up"].values():
            info.pop("collection_ids", None)  # checked; too long to carry in every result
        if not result["errors"]:
            server = server_info(settings.database)
            result["manifest"] = write_manifest(storage, result, server, settings.signing_key)
        _append_log(storage, result)
        if result["errors"]:
            raise BackupFailedError("backup failed: " + "; ".join(result["errors"]), result)
    finally:
        if lock is not None and (result["errors"] or not request["truncate_requested"]):
            lock.release()
    return result


def _abort_split_uploads(settings: Settings, request: RunRequest, storage: Any) -> None:
    if not hasattr(storage, "upload"):
        return
    client = redis_client(settings.runs.redis_url)
    for table in settings.vector.split_tables:
        board = SplitBoard(client, request["run_id"], table, "close")
        vector = settings.vector
        name = backup_file_name(table, request["timestamp"], vector.compression, vector.file_format)
        abort_again(board, storage, name)


def _append_log(storage: Any, result: VectorRunResult) -> None:
    """The set log's block; a failed set whose storage is down still reports its own errors."""
    try:
        append_backup_block(storage, result)
    except StorageError as exc:
        if not result["errors"]:
            raise
        _fail(result, f"the set log could not be written: {exc}")


def _check_files_are_here(storage: Any, result: VectorRunResult) -> None:
    """Each table's file must be in the storage this process writes the manifest to:
    workers on hosts that share no backup directory write their tables to their own
    disks, which makes no set, however well each table went."""
    for table, info in result["tables_backed_up"].items():
        name = str(info.get("backup_file", ""))
        try:
            found = storage.stat(plain_name(name))
        except UnsafeFile:
            found = None
        if found is None or found.size != info.get("file_size_bytes"):
            _fail(
                result,
                f"{table}: {name} is not in {storage.location} as the worker closing the set sees it "
                "(written on another host?): workers on several hosts must share the backup "
                "directory, or store sets in object storage (VECTOR_STORAGE_URL=s3://bucket/prefix)",
            )


def _make_consistent(settings: Settings, storage: Any, result: VectorRunResult, lock: RunLock | None) -> None:
    """Re-take the collection backup once if embeddings reference collections it lacks;
    record an error if that cannot close the gap (see `common.consistency`)."""
    tables = result["tables_backed_up"]
    missing = missing_collections(tables)
    if missing:
        if lock is not None:
            lock.renew()
        try:
            job = TableJob(COLLECTION_TABLE, storage, result["timestamp"], settings.vector, replace=True)
            conn = connect(settings.database)
            try:
                retaken = backup_table(conn, job)
            finally:
                conn.close()
        except VectorBackupError as exc:
            _fail(result, settings.database.redact(f"re-taking {COLLECTION_TABLE}: {exc}"))
            return
        retaken["started_at"] = tables[COLLECTION_TABLE]["started_at"]
        retaken["retaken"] = True
        tables[COLLECTION_TABLE] = retaken
        missing = missing_collections(tables)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        _fail(
            result,
            f"inconsistent set: {len(missing)} collection(s) the embeddings may reference were "
            f"deleted while the backup ran ({shown}); run the backup again",
        )


def _fail(result: VectorRunResult, error: str) -> None:
    result["errors"] = [*result["errors"], error]
    result["backup_performed"] = False


def truncate_after_backup(
    settings: Settings,
    backup_result: VectorRunResult,
    lock: RunLock | None = None,
    may_truncate: Callable[[], None] | None = None,
) -> VectorRunResult:
    """Truncate the configured tables only if `backup_result` is a proven, complete set
    of a run requested within `VECTOR_TRUNCATE_DEADLINE` and, with a `lock`, only while
    this run still holds the database's run lock. `may_truncate` is asked last, right
    before the tables are emptied, and raises `TruncateRefusedError` to refuse.

    Appends the outcome to the set's log either way. Raises a `RunFailedError` carrying
    the result when it refuses or fails; the backup files are never touched. The lock is
    released at the end.
    """
    storage = settings.backup_storage(backup_result.get("task_id"))
    result = VectorRunResult(**backup_result)
    preserved = [t for t in settings.vector.supported_tables if t not in settings.vector.truncate_tables]
    try:
        counts, fingerprints = _proven_set(settings, storage, backup_result)
        # The lock is renewed right before the truncate that needs it.
        if lock is not None and not lock.renew():
            raise TruncateRefusedError(
                f"this run no longer holds the lock on {settings.database.describe()} "
                f"(now held by {lock.holder() or 'nobody'}); nothing was truncated"
            )
        # Last, after the slow checks: the deadline holds up to the truncate itself.
        _check_deadline(backup_result, settings.runs.truncate_deadline_s)
        if may_truncate is not None:
            may_truncate()
        conn = connect(settings.database)
        try:
            result["truncate_results"] = truncate_tables(
                conn,
                counts,
                settings.vector.truncate_tables,
                settings.vector.truncate_lock_timeout_s,
                fingerprints=fingerprints,
            )
        finally:
            conn.close()
    except VectorBackupError as exc:
        error = settings.database.redact(str(exc))
        result["errors"] = [*result.get("errors", []), error]
        result["duration"] = _since(result)
        append_truncate_block(storage, result, preserved, error=error)
        error_type = type(exc) if isinstance(exc, RunFailedError) else TruncateError
        raise error_type(error, result) from None
    finally:
        if lock is not None:
            lock.release()
    result["truncate_performed"] = True
    result["duration"] = _since(result)
    append_truncate_block(storage, result, preserved)
    return result


def _proven_set(
    settings: Settings, storage: Any, backup_result: VectorRunResult
) -> tuple[dict[str, int], dict[str, str]]:
    """The rows per table and the content fingerprints of a set proven complete, taken
    from this database for a truncate, and verifying; `TruncateRefusedError` otherwise.
    Cheap checks first; reading every file for its sha256 comes last."""
    counts = verified_row_counts(backup_result, settings.vector.supported_tables, storage)
    if backup_result.get("database") != settings.database.identity:
        raise TruncateRefusedError(
            f"the backup was taken from {backup_result.get('database')}, not from "
            f"{settings.database.describe()}; nothing was truncated"
        )
    tables = backup_result["tables_backed_up"]
    fingerprints = {t: tables[t].get("fingerprint") for t in settings.vector.truncate_tables}
    unproven = [t for t, value in fingerprints.items() if not value]
    if unproven:
        raise TruncateRefusedError(
            f"the backup of {', '.join(unproven)} was not taken for a truncate (no content "
            "fingerprint); nothing was truncated"
        )
    try:
        manifest = SetRef(storage, plain_name(str(backup_result.get("manifest") or "no manifest")))
        verify_set(manifest, deep=False, signing_key=settings.signing_key)
    except (VerifyError, UnsafeFile) as exc:
        raise TruncateRefusedError(f"the backup set does not verify: {exc}; nothing was truncated") from None
    return counts, fingerprints


def _check_deadline(result: VectorRunResult, deadline_s: float) -> None:
    requested_at = result.get("requested_at") or result.get("started_at") or 0.0
    age = time.time() - requested_at
    if age > deadline_s:
        raise TruncateRefusedError(
            f"the run was requested {_duration(age)} ago, more than VECTOR_TRUNCATE_DEADLINE "
            f"({deadline_s:g} s): a late run never empties a store; nothing was truncated"
        )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def discard_unfinished_set(settings: Settings, task_id: str | None, timestamp: str) -> list[str]:
    """Remove what a stopped (cancelled or abandoned) run left in its directory: temp and
    part files and pending uploads always, table files too unless the set has a manifest
    (a complete, verifiable set is kept). Only names bearing the run's own timestamp; the
    names removed (an aborted upload by the name it would have had).
    """
    storage = settings.backup_storage(task_id)
    stamp = glob.escape(timestamp)
    doomed = set(storage.names(f"*_{stamp}.*{glob.escape(settings.vector.backup_temp_suffix)}"))
    if not storage.exists(manifest_name(timestamp)):
        for table in settings.vector.supported_tables:
            doomed.update(storage.names(f"{glob.escape(table)}_{stamp}.*"))
    for name in doomed:
        storage.delete(name)
    # After the deletes: in a directory the temp files are gone by now, so only uploads
    # (object storage) or a temp file begun meanwhile are left to name here.
    doomed.update(storage.discard_pending(f"*_{stamp}.*"))
    return sorted(doomed)


def _since(result: VectorRunResult) -> float:
    return round(time.time() - result.get("started_at", time.time()), 3)
