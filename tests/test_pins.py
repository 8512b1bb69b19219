"""Pinned sets: retention keeps them whatever its rules say, in a directory and in S3; the
CLI pins and unpins as a real process; the list API and `runs` show the pins; a damaged
pin file still keeps its set. Real PostgreSQL, Redis and S3 (moto's server)."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pytest

from common.catalog import set_name
from common.config import load_settings
from common.manifest import manifest_name
from common.pins import pin, pin_name, read_pin, unpin
from common.retention import RetentionPolicy, apply_retention
from common.run_result import RunRequest
from common.run_steps import back_up_table, close_backup_set
from tests.processes import worker_cli
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.sample_store import add_awkward_rows

DAY = 86400
STAMPS = ["20250101_000000", "20250102_000000", "20250103_000000"]  # oldest first
OLDEST, MIDDLE, NEWEST = STAMPS
SETS = "/api/v0/data_pipeline/vector/backups"
ONE_STORE = pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)


def nobody_uses(stamp: str) -> bool:
    return False


def make_set(task_id: str, stamp: str) -> None:
    """A set written by the run's own steps, in this process (as a worker runs them)."""
    settings = load_settings()
    request = RunRequest(
        run_id=uuid.uuid4().hex, task_id=task_id, timestamp=stamp, truncate_requested=False, external_db=False
    )
    tables = [back_up_table(settings, request, t) for t in settings.vector.supported_tables]
    close_backup_set(settings, request, tables)


@pytest.fixture(params=["local", "s3"])
def backups(request, store, task_id) -> Any:
    """Three verifying sets of one task, a day apart, in a local directory or in S3: the
    task's backup storage."""
    if request.param == "s3":
        request.getfixturevalue("s3_root")
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    for stamp in STAMPS:
        make_set(task_id, stamp)
    storage = load_settings().backup_storage(task_id)
    if storage.local_root is not None:
        now = time.time()
        for age, stamp in zip((4, 3, 1), STAMPS, strict=True):
            os.utime(storage.path(manifest_name(stamp)), (now - age * DAY, now - age * DAY))
    return storage


def stamps_left(storage) -> list[str]:
    return [s for s in STAMPS if storage.exists(manifest_name(s))]


def listed(api, task_id: str) -> dict[str, dict]:
    """The task's sets as the list API shows them, by timestamp."""
    sets = api.get(SETS).get_json()["data"]["sets"]
    return {s["timestamp"]: s for s in sets if s["task_id"] == task_id}


def files_of(storage, stamp: str) -> list[str]:
    return [n for n in storage.names() if stamp in n]


@pytest.fixture
def api(services):
    yield create_app().test_client()
    release_pending_results()


@ONE_STORE
def test_retention_keeps_a_pinned_set_until_it_is_unpinned(backups):
    pin(backups, OLDEST, "audit 2025")

    # keep=0: only the newest set that verifies is kept by the rules; the pin keeps the oldest.
    removed = apply_retention(backups, RetentionPolicy(keep=0), in_use=nobody_uses)

    assert removed == [MIDDLE]
    assert stamps_left(backups) == [OLDEST, NEWEST]
    assert len(files_of(backups, OLDEST)) == 4  # manifest, both tables' files and the pin itself
    assert read_pin(backups, OLDEST)["reason"] == "audit 2025"
    assert not files_of(backups, MIDDLE)

    assert unpin(backups, OLDEST) is True
    assert apply_retention(backups, RetentionPolicy(keep=0), in_use=nobody_uses) == [OLDEST]
    assert stamps_left(backups) == [NEWEST] and not files_of(backups, OLDEST)


@ONE_STORE
@pytest.mark.parametrize("backups", ["local"], indirect=True)  # S3 cannot age an object
def test_the_age_rule_never_removes_a_pinned_set(backups):
    pin(backups, OLDEST)

    removed = apply_retention(backups, RetentionPolicy(keep=0, max_age_days=2), in_use=nobody_uses)

    assert removed == [MIDDLE]
    assert stamps_left(backups) == [OLDEST, NEWEST]


DAMAGED_PINS = {
    "not JSON": b"{not json",
    "too large": json.dumps({"pinned_at": "x", "reason": "y" * 8000}).encode(),
    "not an object": b"[1, 2]",
    "a control character": json.dumps({"pinned_at": "2025", "reason": "\x1b[2Jcleared"}).encode(),
    "not UTF-8": b'{"pinned_at": "\xff"}',
}


@ONE_STORE
@pytest.mark.parametrize("damage", list(DAMAGED_PINS))
def test_a_damaged_pin_file_still_keeps_its_set(backups, damage, api, task_id):
    with backups.writer(pin_name(OLDEST)) as out:
        out.write(DAMAGED_PINS[damage])

    removed = apply_retention(backups, RetentionPolicy(keep=0), in_use=nobody_uses)

    assert removed == [MIDDLE] and stamps_left(backups) == [OLDEST, NEWEST]
    shown = read_pin(backups, OLDEST)
    assert shown["problem"].endswith("the set stays pinned") and shown["reason"] is None
    shown_by_api = listed(api, task_id)[OLDEST]
    assert shown_by_api["pinned"] is True and shown_by_api["pin"]["problem"] == shown["problem"]


@ONE_STORE
@pytest.mark.parametrize("backups", ["local"], indirect=True)
def test_a_link_under_the_pin_name_keeps_its_set(backups, tmp_path, api, task_id):
    """A link is never followed, but something is there: the set stays pinned."""
    (tmp_path / "elsewhere.json").write_text('{"pinned_at": "2025"}')
    backups.path(pin_name(OLDEST)).symlink_to(tmp_path / "elsewhere.json")

    assert apply_retention(backups, RetentionPolicy(keep=0), in_use=nobody_uses) == [MIDDLE]
    assert backups.path(pin_name(OLDEST)).is_symlink()
    shown_by_api = listed(api, task_id)[OLDEST]
    assert shown_by_api["pinned"] is True and "cannot be read" in shown_by_api["pin"]["problem"]


@ONE_STORE
def test_the_list_api_shows_which_sets_are_pinned(backups, task_id, api):
    pin(backups, MIDDLE, "before the migration")

    mine = {s["set"]: s for s in listed(api, task_id).values()}
    one = api.get(f"{SETS}/{set_name(task_id, MIDDLE)}").get_json()["data"]

    assert {name: s["pinned"] for name, s in mine.items()} == {
        set_name(task_id, OLDEST): False,
        set_name(task_id, MIDDLE): True,
        set_name(task_id, NEWEST): False,
    }
    assert mine[set_name(task_id, OLDEST)]["pin"] is None
    pinned = mine[set_name(task_id, MIDDLE)]["pin"]
    assert pinned["reason"] == "before the migration" and pinned["problem"] is None
    assert time.strptime(pinned["pinned_at"], "%Y-%m-%dT%H:%M:%S%z")
    assert one["pinned"] is True and one["pin"] == pinned and one["manifest"]["timestamp"] == MIDDLE
    assert pin_name(MIDDLE) not in mine[set_name(task_id, MIDDLE)]["files"]  # no file of the set


@ONE_STORE
def test_pin_and_unpin_from_the_command_line(backups, task_id):
    name = set_name(task_id, OLDEST)

    pinned = worker_cli("pin", name, "--reason", "kept for the audit")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert f"✓ backup set {name} pinned (kept for the audit)" in pinned.stdout
    assert read_pin(backups, OLDEST)["reason"] == "kept for the audit"
    assert apply_retention(backups, RetentionPolicy(keep=0), in_use=nobody_uses) == [MIDDLE]

    unpinned = worker_cli("unpin", name)
    assert unpinned.returncode == 0, unpinned.stdout + unpinned.stderr
    assert f"✓ backup set {name} unpinned" in unpinned.stdout
    assert read_pin(backups, OLDEST) is None
    again = worker_cli("unpin", name)
    assert again.returncode == 0 and f"backup set {name} was not pinned" in again.stdout

    # By its manifest's path or URL too.
    manifest = f"{backups.location}/{manifest_name(NEWEST)}"
    by_path = worker_cli("pin", manifest)
    assert by_path.returncode == 0, by_path.stdout + by_path.stderr
    assert read_pin(backups, NEWEST) is not None and read_pin(backups, NEWEST)["reason"] is None


@ONE_STORE
@pytest.mark.parametrize("backups", ["local"], indirect=True)
def test_pinning_or_unpinning_a_set_that_does_not_exist_exits_1(backups, task_id):
    missing = set_name(task_id, "20990101_000000")

    pinned, unpinned = worker_cli("pin", missing), worker_cli("unpin", missing)

    assert pinned.returncode == 1 and "no backup set 20990101_000000 in " in pinned.stdout
    assert "nothing pinned" in pinned.stdout
    assert unpinned.returncode == 1 and f"✗ no backup set {missing} in " in unpinned.stdout
    assert not backups.exists(pin_name("20990101_000000"))
    for odd in ("not-a-set", "t~../x", "/tmp/somewhere/"):
        answer = worker_cli("pin", odd)
        assert answer.returncode == 1 and answer.stdout.startswith("✗ ")
    bad_reason = worker_cli("pin", set_name(task_id, OLDEST), "--reason", "two\nlines")
    assert bad_reason.returncode == 2 and "one printable line" in bad_reason.stderr
    assert read_pin(backups, OLDEST) is None


@pytest.mark.usefixtures("celery_worker_session")
@ONE_STORE
def test_runs_shows_which_runs_sets_are_pinned(store, task_id):
    from tasks.pipeline import enqueue_vector_management, wait_for_run

    add_awkward_rows(store.conn, store.kind, store.collection_id)
    first = enqueue_vector_management(task_id, backup=True)["run_id"]
    wait_for_run(first, 60)
    result = wait_for_run(enqueue_vector_management(task_id, backup=True, force=True)["run_id"], 60)
    stamp = result["timestamp"]
    assert worker_cli("pin", set_name(task_id, stamp)).returncode == 0

    shown = json.loads(worker_cli("runs", "--json").stdout)["runs"]
    lines = worker_cli("runs").stdout.splitlines()

    pins = {r["run_id"]: r["pinned"] for r in shown if r["task_id"] == task_id}
    assert pins == {first: False, result["run_id"]: True}
    assert next(line for line in lines if line.startswith(result["run_id"])).endswith("  pinned")
    assert not next(line for line in lines if line.startswith(first)).endswith("pinned")
