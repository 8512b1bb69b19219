"""`make demo`: the whole product on embedded servers, start to finish, in about a minute.

Starts PostgreSQL 16 + pgvector and Redis, seeds a LangChain-shaped store (DEMO_ROWS x
DEMO_DIM, default 100,000 x 384, a 320 MB CSV), starts a real `celery -A worker worker` and Flower
(URL and credentials printed), runs the pipeline's backup -> truncate with live progress
bars and the summary, restores the set and shows the counts match, and stops everything
it started, also on Ctrl-C. It never touches a configured database: the demo truncates.

The sets go to `.demo/training_data/`; with `DEMO_STORAGE=s3`, to an S3 bucket instead:
on moto's S3 server started here with demo credentials, or, when `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) is set, on that endpoint with the environment's credentials, at
`VECTOR_STORAGE_URL` if it is an `s3://` URL, else in the bucket `vector-demo`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("DEMO_ROWS", 100_000))
DIM = int(os.environ.get("DEMO_DIM", 384))
STORAGES = ("local", "s3")
DEMO_BUCKET = "vector-demo"


def main() -> int:
    from worker.embedded import start_postgres, start_redis

    storage = os.environ.get("DEMO_STORAGE", "local")
    configured_url = os.environ.get("VECTOR_STORAGE_URL", "")
    if storage not in STORAGES:
        say(f"DEMO_STORAGE must be one of {', '.join(STORAGES)}, not {storage!r}")
        return 2
    servers, processes = [], []
    scratch = Path(tempfile.mkdtemp(prefix="vector-demo-"))
    task_root = ROOT / ".demo" / "training_data"
    shutil.rmtree(task_root, ignore_errors=True)  # the previous demo's sets: only the last one is kept
    task_root.mkdir(parents=True, exist_ok=True)
    try:
        say("starting embedded PostgreSQL 16 + pgvector and Redis")
        servers.append(start_postgres(scratch / "pg"))
        servers.append(start_redis(scratch / "redis"))
        pg_url, redis_url = servers[0].url, servers[1].url
        env = {
            "VECTOR_DB_URL": pg_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "VECTOR_TASK_ROOT": str(task_root),
            "VECTOR_STORAGE_URL": "",  # the task root, whatever the environment says
        }
        os.environ.update(env)
        in_memory = False
        if storage == "s3":
            os.environ["VECTOR_STORAGE_URL"], in_memory = s3_storage(scratch, servers, configured_url)
        before = seed(pg_url)
        say(f"starting a worker (log: {ROOT / '.demo' / 'worker.log'})")
        processes.append(start("worker", ["worker", "-E", "-l", "info", "-c", "2"]))
        from worker.embedded import free_port

        port, password = free_port(), secrets.token_urlsafe(12)
        os.environ["FLOWER_BASIC_AUTH"] = f"demo:{password}"
        processes.append(start("flower", ["flower", f"--port={port}", "--address=127.0.0.1"]))
        say(f"Flower: http://127.0.0.1:{port}  user: demo  password: {password}")
        code = run_chain(pg_url, before)
        if in_memory:
            say("moto's S3 server keeps its objects in memory: they go when the demo stops")
        return code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stop_everything(processes, servers)


def s3_storage(scratch: Path, servers: list, configured_url: str) -> tuple[str, bool]:
    """The `s3://` URL the demo's sets go to, its bucket created if missing, and whether
    it is on moto's S3 server. Without a configured endpoint that server is started (added
    to `servers`), and this process and every one it starts get its URL and demo
    credentials (never printed)."""
    from common.storage.s3 import split_url
    from common.storage.s3_client import BOTO_ERRORS, S3Options, is_missing, s3_client, storage_error
    from worker.embedded import start_s3

    url = f"s3://{DEMO_BUCKET}/training_data"
    configured = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    if configured:
        url = configured_url if configured_url.startswith("s3://") else url
        say(f"S3: the configured endpoint, {url}")
    else:
        say("starting an embedded S3 endpoint (moto's server)")
        servers.append(start_s3(scratch / "s3"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)  # demo credentials only, whatever the environment holds
        os.environ.update(
            AWS_ENDPOINT_URL=servers[-1].url,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="demo",
            AWS_SECRET_ACCESS_KEY=secrets.token_urlsafe(24),
        )
        say(f"S3: {servers[-1].url} (moto's server), {url}")
    options = S3Options.from_env()
    client, bucket = s3_client(options), split_url(url)[0]
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except BOTO_ERRORS as exc:
            if not is_missing(exc):
                raise
            where = {} if options.region == "us-east-1" else {"LocationConstraint": options.region}
            client.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": where} if where else {}))
    except BOTO_ERRORS as exc:
        raise storage_error(url, "preparing the bucket", exc) from None
    return url, not configured


def start(name: str, celery_args: list[str]) -> subprocess.Popen:
    """`celery -A worker <celery_args>`, logging to `.demo/<name>.log`."""
    with open(ROOT / ".demo" / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-q", "-A", "worker", *celery_args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_everything(processes, servers) -> None:
    """Stop the processes, then the servers; each step runs even if an earlier one failed."""
    from worker.celery_app import release_pending_results

    try:
        release_pending_results()
    finally:
        try:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        finally:
            for server in reversed(servers):
                server.stop()
            say("stopped every process the demo started")


def seed(pg_url: str) -> dict[str, int]:
    """Create and fill the store; returns its row counts."""
    from worker.sample_store import add_bulk_rows, add_collection, create_store, drop_store

    say(f"seeding a LangChain store: {ROWS:,} embeddings of {DIM} dimensions")
    conn = psycopg2.connect(pg_url)
    try:
        conn.autocommit = True
        drop_store(conn)
        create_store(conn, "langchain_postgres")
        collection = add_collection(conn, "langchain_postgres", "demo_docs")
        add_bulk_rows(conn, "langchain_postgres", collection, ROWS, dim=DIM)
        return counts(conn)
    finally:
        conn.close()


def counts(conn) -> dict[str, int]:
    from worker.sample_store import count_rows

    return {t: count_rows(conn, t) for t in ("langchain_pg_collection", "langchain_pg_embedding")}


def run_chain(pg_url: str, before: dict[str, int]) -> int:
    """The pipeline's way in: enqueue once, follow with live bars, then restore."""
    from common.db import DatabaseTarget, connect
    from common.manifest import locate
    from common.restore import restore_set
    from common.sizes import format_size
    from common.storage import open_storage
    from tasks.client.enqueue import enqueue_vector_management
    from tasks.client.runs import run_record, run_result
    from worker.follow import follow_run

    task_id = "demo_" + time.strftime("%Y%m%d_%H%M%S")
    say(f"python -m worker run --task-id {task_id} --backup-vector-tables --truncate-vector-tables")
    run_id = enqueue_vector_management(task_id, backup=True, truncate=True)["run_id"]
    if follow_run(run_id, timeout=600, as_json=False)[0] != 0:
        return 1
    directory = run_result(run_record(run_id)).result["backup_directory"]
    conn = connect(DatabaseTarget.from_url(pg_url))
    try:
        say(f"after the run: {fmt(counts(conn))}")
        say(f"python -m worker restore {directory}")
        restored = restore_set(conn, locate(directory))  # a directory or an s3:// URL
        after = counts(conn)
    finally:
        conn.close()
    say(f"restored in {restored['duration']:.1f}s: {fmt(after)}")
    say("counts match the store before the run" if after == before else f"MISMATCH: before {fmt(before)}")
    say(f"backup files, manifest and vector_backup_log.txt are in {directory}:")
    storage = open_storage(directory)
    for name in storage.names():
        say(f"  {name} ({format_size(storage.stat(name).size)})")
    return 0 if after == before else 1


def fmt(table_counts: dict[str, int]) -> str:
    return ", ".join(f"{table} {rows:,} rows" for table, rows in table_counts.items())


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
