"""Restore drills: the newest set restored into a scratch database and searched, on real
PostgreSQL + pgvector; a good set passes, one with a corrupted vector fails."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from common.config import load_settings
from common.drill import run_drill, scratch_target
from common.exceptions import ConfigurationError
from tasks import names
from tasks.app import app
from tasks.vector_backup import build_vector_workflow
from tests.processes import project_env
from tests.test_alerts import point_alerts_at
from tests.test_s3_faults import cli
from tests.webhook import Webhook
from worker.sample_store import add_awkward_rows, add_bulk_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
EMBEDDING = "langchain_pg_embedding"


@pytest.fixture
def scratch(services, db):
    """A scratch database on the same server, dropped afterwards."""
    name = "drill_" + uuid.uuid4().hex[:8]
    with db.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(services["VECTOR_DB_URL"])._replace(path=f"/{name}"))
    yield url
    with db.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")


def a_set(store, task_id) -> str:
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500, dim=8)
    result = build_vector_workflow(task_id, backup=True).apply_async().get(timeout=60)
    return f"{result['backup_directory']}/{result['manifest']}"


def corrupted_copy(manifest: str, copy: Path) -> Path:
    """A copy of the set in `copy` with one garbled vector and a re-made manifest, so it
    verifies and only a restore finds it out."""
    shutil.copytree(manifest.rsplit("/", 1)[0], copy)
    [data] = copy.glob(f"{EMBEDDING}_*.csv")
    text = data.read_text(encoding="utf-8")
    start = text.index('"[', text.index("row-7,"))
    corrupted = text[:start] + '"[1,2,3x,4]' + text[text.index('"', start + 2) :]  # a garbled component
    data.write_text(corrupted, encoding="utf-8")
    made = json.loads((copy / manifest.rsplit("/", 1)[-1]).read_text())
    entry = made["tables"][EMBEDDING]
    entry["sha256"], entry["bytes"] = hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_size
    (copy / manifest.rsplit("/", 1)[-1]).write_text(json.dumps(made))
    return copy


def test_a_drill_restores_a_good_set_into_the_scratch_database_and_finds_its_vectors(store, task_id, scratch):
    manifest = a_set(store, task_id)
    settings = load_settings()

    result = run_drill(settings, scratch_target(settings, scratch), manifest)

    assert result.state == "passed", result
    assert "20 exact searches found their row" in result.detail and result.set.endswith(
        manifest.split("/")[-1]
    )
    with psycopg2.connect(scratch) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {EMBEDDING}")
        restored = cur.fetchone()[0]
    assert f"'{EMBEDDING}': {restored}" in result.detail and restored >= 500


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_drill_of_a_set_with_a_corrupted_vector_fails_and_the_cli_says_so(
    store, task_id, scratch, tmp_path
):
    manifest = a_set(store, task_id)
    copy = corrupted_copy(manifest, tmp_path / "vector_bak")

    env = project_env(VECTOR_DRILL_DB_URL=scratch)
    failed = cli(env, "drill", str(copy))
    passed = cli(env, "drill", manifest)

    assert failed.returncode == 1 and "✗ restore drill failed" in failed.stdout, failed.stdout + failed.stderr
    assert "invalid input syntax for type vector" in failed.stdout
    assert passed.returncode == 0 and "✓ restore drill passed" in passed.stdout, passed.stdout + passed.stderr
    checked = json.loads(cli(env, "check", "--json").stdout)
    [drill] = [c for c in checked["checks"] if c["name"] == "restore drill"]
    assert drill["state"] == "OK" and drill["summary"].startswith("passed")


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_failed_beat_drill_posts_exactly_one_webhook(store, task_id, scratch, tmp_path, monkeypatch):
    root = tmp_path / "root"
    nightly = corrupted_copy(a_set(store, task_id), root / "vector_bak")  # the newest nightly set
    hook = Webhook()
    point_alerts_at(monkeypatch, hook.url, VECTOR_TASK_ROOT=str(root), VECTOR_DRILL_DB_URL=scratch)
    try:
        sent = app.send_task(names.RESTORE_DRILL)  # as beat sends it, by name

        result = sent.get(timeout=60)

        assert result["state"] == "failed" and "invalid input syntax for type vector" in result["detail"]
        [post] = hook.wait_for(sent.id, 1)
        body = post["body"]
        assert body["event"] == "drill_failed" and body["drill_id"] == sent.id
        assert "invalid input syntax for type vector" in body["error"]
        assert body["backup_directory"] == str(nightly)
        assert body["database"]["dbname"] == urlsplit(scratch).path[1:] and "user" not in body["database"]
        time.sleep(2)  # a second post would come within the retry backoff
        assert len(hook.posts_for(sent.id)) == 1
    finally:
        hook.stop()


def test_a_drill_never_runs_into_the_live_database(services):
    settings = load_settings()
    with pytest.raises(ConfigurationError, match="names the live database"):
        scratch_target(settings, services["VECTOR_DB_URL"])
