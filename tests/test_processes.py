"""The processes users run: `celery -A worker worker` as documented, and `make demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import FAKE_PASSWORD
from worker.sample_store import add_bulk_rows, count_rows

ROOT = Path(__file__).resolve().parent.parent
RUN_CHAIN = """
import json, sys
from tasks.vector_backup import build_vector_workflow
print(json.dumps(build_vector_workflow(sys.argv[1], truncate=True).apply_async().get(timeout=60)))
"""


def isolated(url: str, db: int) -> str:
    """The same Redis on another database number, so only the subprocess worker consumes."""
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.mark.slow
def test_celery_worker_command_runs_the_chain_without_printing_the_password(
    store, services, task_id, task_root, tmp_path
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 2_000)
    broker = isolated(services["CELERY_BROKER_URL"], 5)
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info", "-E", "-c", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = subprocess.run(
            [sys.executable, "-c", RUN_CHAIN, task_id],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.terminate()
        worker.wait(30)
    assert client.returncode == 0, client.stderr
    result = json.loads(client.stdout)
    output = log.read_text()
    assert result["truncate_performed"] is True
    assert result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == 2_000
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert "vector.truncate_vector_tables" in output and "succeeded" in output
    assert FAKE_PASSWORD not in output


@pytest.mark.slow
def test_make_demo_runs_the_chain_restores_and_stops_everything(tmp_path):
    started = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "worker.demo"],
        cwd=ROOT,
        # Smaller than the default 100,000 x 384 to keep CI short; the path is the same.
        env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_ROWS": "60000", "DEMO_DIM": "16"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert re.search(r"Flower: http://127\.0\.0\.1:\d+  user: demo  password: \S+", out), out
    assert "langchain_pg_embedding: 60,000 rows ->" in out
    assert "✓ truncate performed: langchain_pg_embedding emptied (60,000 rows removed)" in out
    assert "after the run: langchain_pg_collection 1 rows, langchain_pg_embedding 0 rows" in out
    assert "restored in" in out and "counts match the store before the run" in out
    assert out.rstrip().endswith("stopped every process the demo started")
    assert "Traceback" not in demo.stderr
    assert time.monotonic() - started < 120
    celery_processes = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if "celery" in " ".join(p.info["cmdline"] or [])
    ]
    assert not celery_processes, celery_processes


@pytest.mark.slow
def test_make_demo_with_s3_storage_keeps_the_set_in_a_bucket_of_its_own_s3_server():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "VECTOR_STORAGE_URL"}
    demo = subprocess.run(
        [sys.executable, "-m", "worker.demo"],
        cwd=ROOT,
        # 60,000 x 16 is a file of several parts (8 MiB each): a real multipart upload.
        env={**env, "PYTHONPATH": str(ROOT), "DEMO_STORAGE": "s3", "DEMO_ROWS": "60000", "DEMO_DIM": "16"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    endpoint = re.search(r"S3: (http://127\.0\.0\.1:\d+) \(moto's server\), (s3://[^\n]+)\n", out)
    assert endpoint and endpoint.group(2) == "s3://vector-demo/training_data", out
    directory = re.search(r"in (s3://vector-demo/training_data/demo_\d{8}_\d{6}/vector_bak)\n", out).group(1)
    assert "langchain_pg_embedding: 60,000 rows ->" in out
    assert "✓ truncate performed: langchain_pg_embedding emptied (60,000 rows removed)" in out
    assert f"python -m worker restore {directory}\n" in out
    assert "restored in" in out and "counts match the store before the run" in out
    listed = re.findall(r"\[demo\]   (\S+) \(", out.split(f"are in {directory}:", 1)[1])
    assert [re.sub(r"\d{8}_\d{6}", "T", name) for name in listed] == [
        "langchain_pg_collection_T.csv",
        "langchain_pg_embedding_T.csv",
        "manifest_T.json",
        "vector_backup_log.txt",
    ]
    assert out.rstrip().endswith("stopped every process the demo started")
    assert "Traceback" not in demo.stderr
    assert not any((ROOT / ".demo" / "training_data").iterdir())  # nothing on the local disk
    with pytest.raises(OSError):  # the S3 server is gone too
        urllib.request.urlopen(endpoint.group(1), timeout=2)


def celery_processes() -> list[list[str]]:
    return [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if "celery" in " ".join(p.info["cmdline"] or [])
    ]


def test_ctrl_c_during_make_demo_stops_everything_it_started():
    demo = subprocess.Popen(
        [sys.executable, "-m", "worker.demo"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_ROWS": "300000", "DEMO_DIM": "16"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if "python -m worker run" in line:  # worker and Flower are up, the run is starting
            break
    assert celery_processes(), "the demo's worker and Flower should be running"
    demo.send_signal(signal.SIGINT)
    out = "".join(lines) + demo.stdout.read()
    assert demo.wait(60) == 130, out
    assert "interrupted" in out and out.rstrip().endswith("stopped every process the demo started")
    assert not celery_processes()
