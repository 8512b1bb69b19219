"""celery beat's nightly backup through a real worker, and retention on real backup sets."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import pytest

from common import run_keys
from common.config import load_schedules, load_settings
from common.redis_conn import redis_client
from common.retention import RetentionPolicy, apply_retention
from common.run_result import RunRequest
from common.run_steps import back_up_table, close_backup_set
from tasks.client.checks import missed_nightly_backup
from tests.processes import project_env, start_logged
from worker.sample_store import add_awkward_rows

DAY = 86400
STAMPS = ["20250101_000000", "20250102_000000", "20250103_000000", "20250104_000000"]  # oldest first


@pytest.fixture
def four_sets(store, services, task_id):
    """Four real, verifying sets in one directory, a day apart; the newest is corrupted."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    settings = load_settings()
    now = time.time()
    for age, stamp in zip((4, 3, 2, 1), STAMPS, strict=True):
        request = RunRequest(
            run_id=uuid.uuid4().hex,
            task_id=task_id,
            timestamp=stamp,
            truncate_requested=False,
            external_db=False,
        )
        tables = [back_up_table(settings, request, t) for t in settings.vector.supported_tables]
        result = close_backup_set(settings, request, tables)
        manifest = Path(result["backup_directory"]) / result["manifest"]
        os.utime(manifest, (now - age * DAY, now - age * DAY))
    directory = settings.backup_directory(task_id)
    newest = next(directory.glob(f"langchain_pg_embedding_{STAMPS[-1]}.csv"))
    newest.write_bytes(newest.read_bytes().replace(b"plain text", b"plain TEXT"))
    return directory


def stamps_left(directory: Path) -> list[str]:
    return sorted(p.name[len("manifest_") : -len(".json")] for p in directory.glob("manifest_*.json"))


def test_retention_keeps_the_newest_n_and_the_newest_set_that_verifies(four_sets, caplog):
    caplog.set_level(logging.INFO, logger="common.retention")

    removed = apply_retention(four_sets, RetentionPolicy(keep=1), in_use=lambda stamp: False)

    # Newest (corrupt) kept by count, the one before it because it is the newest that verifies.
    assert sorted(removed) == STAMPS[:2]
    assert stamps_left(four_sets) == STAMPS[2:]
    assert not list(four_sets.glob(f"*_{STAMPS[0]}.csv")) and not list(four_sets.glob(f"*_{STAMPS[1]}.*"))
    assert len(list(four_sets.glob("*.csv"))) == 4
    assert f"retention removed backup set {STAMPS[0]}" in caplog.text


def test_retention_by_age_never_touches_a_set_in_use(four_sets):
    in_use = {STAMPS[0]}

    removed = apply_retention(
        four_sets, RetentionPolicy(keep=0, max_age_days=2.5), in_use=in_use.__contains__
    )

    assert removed == [STAMPS[1]]
    assert stamps_left(four_sets) == [STAMPS[0], *STAMPS[2:]]


def test_retention_with_nothing_to_remove_removes_nothing(four_sets):
    assert apply_retention(four_sets, RetentionPolicy(keep=10), in_use=lambda stamp: False) == []
    assert stamps_left(four_sets) == STAMPS


def test_schedules_come_from_the_environment():
    schedules = load_schedules({"VECTOR_BACKUP_SCHEDULE": "15 1 * * *", "VECTOR_RETENTION_KEEP": "3"})
    assert schedules.backup == "15 1 * * *" and schedules.keep == 3 and schedules.retention == "30 3 * * *"


@pytest.mark.usefixtures("celery_worker_session")
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_celery_beat_on_a_seconds_schedule_produces_a_backup_set(store, task_root, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    nightly = task_root / "vector_bak"
    before = set(nightly.glob("manifest_*.json"))
    settings = load_settings()
    every_2s = load_schedules({"VECTOR_BACKUP_SCHEDULE": "2", "VECTOR_BACKUP_GRACE": "60"})
    redis_client(settings.runs.redis_url).delete(run_keys.NIGHTLY_SENT)
    assert missed_nightly_backup(settings, every_2s) is not None  # nothing shows one was sent
    log = tmp_path / "beat.log"
    beat = start_logged(
        ["-m", "celery", "-A", "worker", "beat", "-l", "info", "-s", str(tmp_path / "schedule")],
        log,
        project_env(VECTOR_BACKUP_SCHEDULE="2", VECTOR_RETENTION_SCHEDULE="3600"),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(nightly.glob("manifest_*.json")) - before:
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(10)

    new = set(nightly.glob("manifest_*.json")) - before
    assert new, log.read_text()[-2000:]
    assert "vector.nightly_backup" in log.read_text()
    stamp = sorted(new)[-1].name[len("manifest_") : -len(".json")]
    assert (nightly / f"langchain_pg_embedding_{stamp}.csv").is_file()
    assert missed_nightly_backup(settings, every_2s) is None  # the nightly task recorded its send
