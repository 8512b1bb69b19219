"""`make demo`: the whole chain on embedded servers, start to finish, in about a minute.

Starts PostgreSQL 16 + pgvector and Redis, seeds a LangChain-shaped store, starts a real
`celery -A worker worker`, runs backup -> truncate with progress, prints the result and
stops everything it started. It never touches a configured database: the demo truncates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
ROWS, DIM = 120_000, 64


def main() -> int:
    from worker.embedded import start_postgres, start_redis

    servers, worker = [], None
    scratch = Path(tempfile.mkdtemp(prefix="vector-demo-"))
    task_root = ROOT / ".demo" / "training_data"
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
        }
        os.environ.update(env)
        seed(pg_url)
        say("starting a worker: celery -A worker worker -E")
        worker_log = ROOT / ".demo" / "worker.log"
        say(f"worker log: {worker_log}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-q", "-A", "worker", "worker", "-E", "-l", "info", "-c", "2"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=open(worker_log, "wb"),  # noqa: SIM115 - closed when the demo exits
            stderr=subprocess.STDOUT,
        )
        run_chain(pg_url)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stop_everything(worker, servers)


def stop_everything(worker, servers) -> None:
    """Stop the worker, then the servers; each step runs even if an earlier one failed."""
    from worker.celery_app import release_pending_results

    try:
        release_pending_results()
    finally:
        try:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
        finally:
            for server in reversed(servers):
                server.stop()
            say("stopped every process the demo started")


def seed(pg_url: str) -> None:
    from worker.sample_store import add_bulk_rows, add_collection, create_store, drop_store

    say(f"seeding a LangChain store: {ROWS:,} embeddings of {DIM} dimensions")
    with psycopg2.connect(pg_url) as conn:
        conn.autocommit = True
        drop_store(conn)
        create_store(conn, "langchain_postgres")
        collection = add_collection(conn, "langchain_postgres", "demo_docs")
        add_bulk_rows(conn, "langchain_postgres", collection, ROWS, dim=DIM)


def run_chain(pg_url: str) -> None:
    from tasks.vector_backup import build_vector_workflow, table_results
    from worker.sample_store import count_rows

    task_id = "demo_" + time.strftime("%Y%m%d_%H%M%S")
    workflow = build_vector_workflow(task_id, backup=True, truncate=True)
    final = workflow.freeze()
    header = table_results(workflow)
    say(f"running backup -> truncate for task {task_id}")
    workflow.apply_async()
    shown = ""
    while True:
        finished = final.ready()  # read before the tables, so the last line shows their end
        line = "   ".join(describe(r) for r in header)
        if line != shown:
            print(f"  {line}", flush=True)
            shown = line
        if finished:
            break
        time.sleep(0.2)
    result = final.result  # ready() already read it; get() would hold a pub/sub subscription
    if final.failed():
        say(f"the run failed: {result}")
        return
    print(json.dumps(result, indent=2, ensure_ascii=False))
    with psycopg2.connect(pg_url) as conn:
        say(
            f"after the run: langchain_pg_embedding has {count_rows(conn, 'langchain_pg_embedding')} rows, "
            f"langchain_pg_collection has {count_rows(conn, 'langchain_pg_collection')}"
        )
    say(f"backup files and vector_backup_log.txt are in {result['backup_directory']}")


def describe(async_result) -> str:
    info = async_result.info if isinstance(async_result.info, dict) else {}
    if async_result.state == "SUCCESS":
        return f"{info.get('table', '?')}: {info.get('row_count', 0):,} rows done"
    if async_result.state == "PROGRESS":
        percent = info.get("percent")
        shown = f" ({percent:.0f}%)" if percent is not None else ""
        return f"{info['table']}: {info['rows']:,} rows{shown}"
    return f"{async_result.state.lower()}"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
