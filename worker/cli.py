"""`python -m worker`: run the vector step for a pipeline task and follow it.

Exit status: 0 success (or nothing asked), 1 the run failed, 2 usage error.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click
import redis

from common import output
from common.exceptions import ConfigurationError, StorageError, VectorBackupError
from worker.follow import console, follow_run, report

# Options shared by `run` and `follow`.
timeout_option = click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print {'vector_management_stats': ...} as JSON."
)


@click.group()
def cli() -> None:
    """Back up, empty and restore a LangChain PGVector store with Celery."""
    from worker.celery_app import release_pending_results

    click.get_current_context().call_on_close(release_pending_results)


@cli.command()
@click.option("--task-id", help="Pipeline task id; backups go to <root>/<task-id>/vector_bak/.")
@click.option("--backup-vector-tables", is_flag=True, help="Back up both vector tables to CSV.")
@click.option(
    "--truncate-vector-tables",
    is_flag=True,
    help="Empty langchain_pg_embedding after a complete backup (turns backup on).",
)
@click.option(
    "--skip-training-load",
    is_flag=True,
    help="The pipeline skips loading training data; the vector step still runs.",
)
@click.option(
    "--db-connection",
    metavar="URL",
    help="A postgresql:// URL (user, password, host, port, db) to use instead of the configured database.",
)
@click.option("--force", is_flag=True, help="Send a new run even if this task id already has one.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the run to its end.")
@timeout_option
@json_option
def run(
    task_id,
    backup_vector_tables,
    truncate_vector_tables,
    skip_training_load,
    db_connection,
    force,
    wait,
    timeout,
    as_json,
):
    """Enqueue the vector step once for a pipeline task, then (with --wait) follow it."""
    from tasks.client.enqueue import enqueue_vector_management

    if truncate_vector_tables and not backup_vector_tables:
        console.print("--truncate-vector-tables implies --backup-vector-tables: backup turned on")
    if skip_training_load:
        console.print("--skip-training-load: training load skipped; the vector step still runs")
    try:
        answer = enqueue_vector_management(
            task_id,
            backup=backup_vector_tables,
            truncate=truncate_vector_tables,
            db_connection=db_connection,
            force=force,
        )
    except StorageError as exc:  # not a usage error: the storage is down or refuses
        click.echo(f"✗ {exc}", err=True)
        sys.exit(1)
    except VectorBackupError as exc:
        raise click.UsageError(str(exc)) from None
    if answer["run_id"] is None:
        report(None, None, as_json)
        return
    console.print(answer["message"], soft_wrap=True)
    if not wait:
        click.echo(answer["run_id"])
        console.print(output.follow_hint(answer["run_id"]))
        return
    joined = not answer["enqueued"]
    code, state = follow_run(answer["run_id"], timeout, as_json, may_rejoin=joined)
    if state == "abandoned" and joined:
        # The run this call joined lost its workers: this call's request still stands.
        again = enqueue_vector_management(
            task_id,
            backup=backup_vector_tables,
            truncate=truncate_vector_tables,
            db_connection=db_connection,
        )
        console.print(again["message"], soft_wrap=True)
        code, state = follow_run(again["run_id"], timeout, as_json)
    sys.exit(code)


@cli.command()
@click.argument("run_id")
@timeout_option
@json_option
def follow(run_id, timeout, as_json):
    """Show a run's live progress per table, then its summary."""
    sys.exit(follow_run(run_id, timeout, as_json)[0])


@cli.command()
@click.argument("run_id")
def cancel(run_id):
    """Cancel a queued or running run: its COPYs stop, its unfinished files are removed,
    its database lock is freed, and it never truncates. Exit 1 if it has already ended."""
    from common.exceptions import ConfigurationError, RunNotCancellable
    from tasks.client.runs import cancel_run

    try:
        status = cancel_run(run_id)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except RunNotCancellable as exc:
        click.echo(f"✗ {exc}")
        sys.exit(1)
    click.echo(output.cancelled_message(run_id))
    click.echo(output.status_line(status))


@cli.command()
@click.option("--limit", default=20, show_default=True, help="How many runs, newest first.")
@json_option
def runs(limit, as_json):
    """Recent runs: id, task id, database, state, started, last heartbeat, tables."""
    from tasks.client.runs import pinned_runs, recent_runs

    found = recent_runs(limit)
    pinned = pinned_runs(found)
    if as_json:
        shown = [{**status, "pinned": status["run_id"] in pinned} for status in found]
        click.echo(json.dumps({"runs": shown}, ensure_ascii=False))
        return
    if not found:
        click.echo("no runs recorded")
        return
    for status in found:
        click.echo(output.status_line(status, pinned=status["run_id"] in pinned))


set_argument = click.argument("where", metavar="SET")


@contextlib.contextmanager
def _set_command_errors():
    """How `pin` and `unpin` fail: a SET that names no set's place is a usage error (exit
    2); a set or storage that cannot be read prints ✗ and exits 1."""
    try:
        yield
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except (VectorBackupError, OSError) as exc:
        click.echo(f"✗ {exc}")
        sys.exit(1)


@cli.command()
@set_argument
@click.option("--reason", help="Why it is kept (one line, at most 500 characters); the list API shows it.")
def pin(where, reason):
    """Keep a backup set from retention until it is unpinned.

    SET is a set's name as the list API shows it (`<task_id>~<timestamp>`, or
    `~<timestamp>` for <root>/vector_bak), or its manifest's path or s3:// URL. Pinning
    a pinned set replaces its reason. Exit 1 if there is no such set.
    """
    from common.catalog import set_ref
    from common.config import load_settings
    from common.pins import pin as pin_set

    with _set_command_errors():
        ref = set_ref(load_settings(), where)
        done = pin_set(ref.storage, ref.timestamp, reason)
    click.echo(output.pinned_message(where, done))


@cli.command()
@set_argument
def unpin(where):
    """Let retention's rules apply to a pinned backup set again.

    SET as for `pin`. Exit 1 if there is neither such a set nor a pin of one.
    """
    from common.catalog import set_ref
    from common.config import load_settings
    from common.pins import unpin as unpin_set

    with _set_command_errors():
        ref = set_ref(load_settings(), where)
        was_pinned = unpin_set(ref.storage, ref.timestamp)
        if not was_pinned and ref.storage.stat(ref.manifest) is None:
            click.echo(output.no_set_message(where, ref.storage.location))
            sys.exit(1)
    click.echo(output.unpinned_message(where, was_pinned))


@cli.command()
@click.argument("path")
def verify(path):
    """Check a backup set against its manifest: sizes, sha256, CSV rows and headers.

    PATH is a backup directory or an s3:// URL of one (its newest set), or one set's
    manifest_*.json. Exit 0 only when every file holds.
    """
    from common.config import load_settings
    from common.manifest import find_manifest, verify_set

    try:
        key = load_settings().signing_key
        manifest_path = find_manifest(path)
        manifest = verify_set(manifest_path, signing_key=key)
    except VectorBackupError as exc:
        click.echo(f"✗ {exc}")
        sys.exit(1)
    click.echo("\n".join(output.verified_lines(manifest, manifest_path)))


@cli.command("export-csv")
@click.argument("path")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write {table}_{timestamp}.csv into.",
)
def export_csv(path, out):
    """Turn a binary backup set into the seeds' CSV files, without a database.

    PATH is a backup directory (its newest set) or one set's manifest_*.json. The set is
    verified first; the files equal a CSV backup of the same snapshot.
    """
    from common.config import load_settings
    from common.export import export_csv as export

    try:
        settings = load_settings()
        done = export(path, out, settings.signing_key, settings.vector.backup_temp_suffix)
    except (VectorBackupError, OSError) as exc:
        click.echo(f"✗ export failed, no partial file was left: {exc}")
        sys.exit(1)
    for table, name, rows in done:
        click.echo(f"✓ {table}: {rows:,} rows -> {out / name}")


@cli.command()
@click.argument("path")
@click.option(
    "--db-connection", metavar="URL", help="Restore into this database instead of the configured one."
)
@click.option(
    "--mode",
    type=click.Choice(["replace", "append"]),
    default="replace",
    show_default=True,
    help="replace: the tables' rows are replaced (staging tables swapped in); append: rows are added.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 32),
    default=None,
    help="Connections loading each large file together [default: VECTOR_RESTORE_JOBS, the cores].",
)
@click.option(
    "--collection",
    "collections",
    multiple=True,
    metavar="NAME",
    help="Restore only this LangChain collection (repeatable), in place; the others stay as they are.",
)
def restore(path, db_connection, mode, jobs, collections):
    """Verify a backup set, then restore it with COPY FROM: every table or none.

    PATH is a backup directory (its newest set) or one set's manifest_*.json. Missing
    tables (and the vector extension) are created from the manifest. replace loads
    staging tables, builds their indexes, then swaps them in: searches keep answering
    from the old rows until that short swap. With --collection, only the named
    collections and their embeddings are replaced, in one transaction.
    """
    from common.collection_restore import restore_collections
    from common.config import load_settings
    from common.db import DatabaseTarget, connect
    from common.restore import restore_set

    if collections and mode != "replace":
        raise click.UsageError("--collection replaces collections; --mode append does not apply")
    if collections and jobs is not None:
        raise click.UsageError("--collection loads through one connection; --jobs does not apply")
    try:
        target = DatabaseTarget.from_url(db_connection) if db_connection else load_settings().database
        conn = connect(target)
        try:
            if collections:
                done = restore_collections(conn, path, list(collections))
            else:
                done = restore_set(conn, path, mode, jobs=jobs, connect=lambda: connect(target))
        finally:
            conn.close()
    except VectorBackupError as exc:
        click.echo(f"✗ restore refused or failed, nothing was written: {exc}")
        sys.exit(1)
    if collections:
        click.echo("\n".join(output.collections_restored_lines(done, target)))
    else:
        click.echo("\n".join(output.restored_lines(done, target, mode)))


@cli.command()
@click.argument("path", required=False)
def drill(path):
    """Restore drill now: the newest nightly set (or PATH) into VECTOR_DRILL_DB_URL, then
    row counts, the collection link and exact searches. Exit 0 only when it passes."""
    from common.config import load_schedules, load_settings
    from common.drill import record, run_drill, scratch_target
    from common.redis_conn import redis_client

    try:
        settings, schedules = load_settings(), load_schedules()
        if schedules.drill_db_url is None:
            raise ConfigurationError("set VECTOR_DRILL_DB_URL to a scratch database for restore drills")
        result = run_drill(settings, scratch_target(settings, schedules.drill_db_url), path)
    except VectorBackupError as exc:
        click.echo(f"✗ {exc}")
        sys.exit(1)
    with contextlib.suppress(redis.RedisError):
        record(redis_client(settings.runs.redis_url), result)
    mark = "✓" if result.state == "passed" else "✗"
    click.echo(
        f"{mark} restore drill {result.state} in {result.duration:.1f}s ({result.set}): {result.detail}"
    )
    sys.exit(0 if result.state == "passed" else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the status and every check.")
def check(as_json):
    """Is the service healthy, and is there a recent backup set that verifies?

    One line per check; the exit code is Nagios's: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    """
    from worker.check import record, report, run_checks

    try:
        checks = run_checks()
    except VectorBackupError as exc:
        click.echo(f"UNKNOWN: check: {exc}")
        sys.exit(3)
    answer = report(checks)
    record(answer)
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False))
    else:
        click.echo("\n".join(c.line() for c in checks))
    sys.exit(answer["code"])


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 in compose)."
)
@click.option("--port", default=8084, show_default=True, help="Port to listen on.")
@click.option(
    "--threads", default=8, show_default=True, help="Request threads (a waiting request holds one)."
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without API_TOKEN on a non-loopback address (anyone who reaches it can empty the store).",
)
def api(host, port, threads, insecure_no_auth):
    """Serve the HTTP API (waitress). Runs execute on the workers, never in this process."""
    from worker.api import serve

    console.print(f"API on http://{host}:{port}/api/v0/openapi.json")
    serve(host, port, threads, insecure_no_auth)
