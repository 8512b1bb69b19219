"""Everything around backup sets with `VECTOR_STORAGE_URL=s3://…`: the API's list, manifest
and download, its task check, retention and the aborting of pending uploads, a stopped
run's cleanup, the shared set log, restore and the CLI's verify, against a real worker,
real PostgreSQL and a real S3 endpoint over HTTP (moto's server, or `TEST_S3_URL`)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.request
import uuid

import pytest

from common.backup_log import LOG_NAME
from common.catalog import task_exists
from common.config import load_settings
from common.exceptions import StorageError
from common.manifest import manifest_name
from common.retention import RetentionPolicy, apply_retention
from common.run_result import RunRequest
from common.run_steps import back_up_table, close_backup_set, discard_unfinished_set
from common.storage.s3 import S3Prefix
from tasks.backup_sets import restore_backup_set
from tasks.scheduled import apply_backup_retention
from tasks.vector_backup import build_vector_workflow
from tests.conftest import FAKE_S3_SECRET
from tests.processes import start_logged, worker_cli
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.embedded import free_port
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 90
BACKUP = "/api/v0/data_pipeline/vector/backup"
SETS = "/api/v0/data_pipeline/vector/backups"
TABLES = ("langchain_pg_collection", "langchain_pg_embedding")
STAMPS = ["20250101_000000", "20250102_000000", "20250103_000000", "20250104_000000"]  # oldest first


@pytest.fixture
def api(s3_root):
    """The API of a process configured like the workers: its settings read after `s3_root`."""
    yield create_app().test_client()
    release_pending_results()


def make_set(task_id: str | None, stamp: str) -> dict:
    """A set written by the run's own steps, in this process (as the worker runs them)."""
    settings = load_settings()
    request = RunRequest(
        run_id=uuid.uuid4().hex, task_id=task_id, timestamp=stamp, truncate_requested=False, external_db=False
    )
    tables = [back_up_table(settings, request, t) for t in settings.vector.supported_tables]
    return close_backup_set(settings, request, tables)


def start_upload(storage: S3Prefix, name: str) -> str:
    """A multipart upload with its first part sent, as a writer leaves it, pending: alive, or
    left by a writer whose abort could not reach S3."""
    where = {"Bucket": storage.bucket, "Key": storage.key(name)}
    upload_id = storage.client.create_multipart_upload(**where)["UploadId"]
    storage.client.upload_part(**where, UploadId=upload_id, PartNumber=1, Body=b"id,name\n")
    return upload_id


def pending_keys(storage: S3Prefix) -> list[str]:
    answer = storage.client.list_multipart_uploads(Bucket=storage.bucket)
    return sorted(u["Key"] for u in answer.get("Uploads", []))


def test_sets_in_s3_are_listed_and_download_byte_for_byte(api, store, task_id, task_root, s3_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    first = build_vector_workflow(task_id, backup=True).apply_async().get(timeout=TIMEOUT)
    assert not (task_root / task_id).exists()  # the task is known only by its prefix

    # The prefix alone makes the task known: the API runs a backup into it.
    answer = api.post(BACKUP, json={"task_id": task_id})
    assert answer.status_code == 200, answer.get_json()
    second = answer.get_json()["data"]
    assert second["backup_directory"] == f"{s3_root}/{task_id}/vector_bak"

    sets = [s for s in api.get(SETS).get_json()["data"]["sets"] if s["task_id"] == task_id]
    assert [s["run_id"] for s in sets] == [second["job_id"], first["run_id"]]  # newest first
    newest = sets[0]
    assert newest["tables"]["langchain_pg_embedding"]["rows"] == 10
    manifest = api.get(f"{SETS}/{newest['set']}").get_json()["data"]["manifest"]
    assert manifest["run_id"] == newest["run_id"]

    storage = load_settings().backup_storage(task_id)
    for name in newest["files"]:
        download = api.get(f"{SETS}/{newest['set']}/files/{name}")
        assert download.status_code == 200
        assert download.data == storage.open(name).read()
        assert int(download.headers["Content-Length"]) == len(download.data)

    entry = manifest["tables"]["langchain_pg_embedding"]
    url = f"{SETS}/{newest['set']}/files/{entry['file']}"
    whole = api.get(url)
    assert whole.headers["ETag"] == f'"{entry["sha256"]}"' == f'"{hashlib.sha256(whole.data).hexdigest()}"'
    part = api.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.data == whole.data[10:20]
    assert api.get(f"{SETS}/{newest['set']}/files/{LOG_NAME}").status_code == 404


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_the_api_server_streams_a_multipart_s3_object_whole_and_from_an_offset(
    store, task_id, s3_root, monkeypatch, tmp_path
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 10_000, dim=64, random_vectors=True)
    monkeypatch.setenv("VECTOR_S3_PART_SIZE_MB", "5")
    stamp = "20250110_000000"
    entry = make_set(task_id, stamp)["tables_backed_up"]["langchain_pg_embedding"]
    expected = load_settings().backup_storage(task_id).open(entry["backup_file"]).read()
    assert len(expected) > 5 << 20  # more than one part was uploaded

    port, log = free_port(), tmp_path / "api.log"
    server = start_logged(["-m", "worker", "api", "--port", str(port)], log)  # waitress, as deployed
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/api/v0/openapi.json", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"{base}{SETS}/{task_id}~{stamp}/files/{entry['backup_file']}"
        with urllib.request.urlopen(url, timeout=60) as answer:
            whole, headers = answer.read(), answer.headers
        tail = urllib.request.Request(url, headers={"Range": f"bytes={len(expected) - 100}-"})
        with urllib.request.urlopen(tail, timeout=60) as answer:
            ranged, ranged_status = answer.read(), answer.status
    finally:
        server.terminate()
        server.wait(10)

    assert whole == expected and int(headers["Content-Length"]) == len(expected)
    assert headers["ETag"] == f'"{entry["sha256"]}"'
    assert ranged_status == 206 and ranged == expected[-100:]
    assert FAKE_S3_SECRET not in log.read_text()


def test_a_task_exists_when_its_directory_or_its_prefix_does(api, task_id, task_root, s3_root):
    settings = load_settings()
    on_disk, nowhere = f"{task_id}_disk", f"{task_id}_none"
    settings.backup_storage(task_id).append_text(LOG_NAME, "a task with a prefix only\n")
    (task_root / on_disk).mkdir()

    assert task_exists(settings, task_id) and task_exists(settings, on_disk)
    assert not task_exists(settings, nowhere)
    # `backup_vector_tables: false` answers after the task check, without a run.
    asked = {
        name: api.post(BACKUP, json={"task_id": name, "backup_vector_tables": False})
        for name in (task_id, on_disk, nowhere)
    }
    assert asked[task_id].status_code == 200 and asked[on_disk].status_code == 200
    assert asked[nowhere].status_code == 404
    assert "task directory not found" in asked[nowhere].get_json()["data"]["response"]


def test_a_bucket_that_cannot_be_reached_answers_503_and_names_no_secret(
    s3_root, task_id, monkeypatch, caplog
):
    monkeypatch.setenv("VECTOR_STORAGE_URL", f"s3://vb-missing-{uuid.uuid4().hex[:12]}/training_data")
    api = create_app().test_client()

    answers = [api.get(SETS), api.post(BACKUP, json={"task_id": task_id, "backup_vector_tables": False})]

    for answer in answers:
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["data"]["error_type"] == "SERVICE_UNAVAILABLE"
        assert FAKE_S3_SECRET not in answer.get_data(as_text=True)
    assert "the bucket does not exist" in caplog.text and FAKE_S3_SECRET not in caplog.text


@pytest.fixture
def four_sets(store, s3_root):
    """Four verifying sets in `<root>/vector_bak/` on S3, written oldest first; the newest is
    corrupted (its embeddings object rewritten with one word changed)."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    for stamp in STAMPS:
        make_set(None, stamp)
    storage = load_settings().backup_storage()
    newest = f"langchain_pg_embedding_{STAMPS[-1]}.csv"
    data = storage.open(newest).read()
    with storage.writer(newest, replace=True) as out:
        out.write(data.replace(b"plain text", b"plain TEXT"))
    return storage


def stamps_left(storage: S3Prefix) -> list[str]:
    return [s for s in STAMPS if storage.exists(manifest_name(s))]


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_retention_on_s3_keeps_the_newest_and_the_newest_set_that_verifies(four_sets, caplog):
    caplog.set_level(logging.INFO, logger="common.retention")

    removed = apply_retention(four_sets, RetentionPolicy(keep=1), in_use=lambda stamp: False)

    assert sorted(removed) == STAMPS[:2]
    assert stamps_left(four_sets) == STAMPS[2:]
    assert not [n for n in four_sets.names() if STAMPS[0] in n or STAMPS[1] in n]
    assert f"retention removed backup set {STAMPS[0]} from {four_sets.location}" in caplog.text


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_retention_removes_nothing_while_the_storage_cannot_be_read(four_sets, monkeypatch):
    """A storage that fails while retention checks which set verifies tells nothing about
    the sets: none may be taken for damaged and the newest good one removed for it."""
    real_open = S3Prefix.open

    def refusing(storage, name):
        if name.startswith("langchain_pg_embedding_"):
            raise StorageError(f"{storage.location}: reading {name} failed: the storage answered SlowDown")
        return real_open(storage, name)

    monkeypatch.setattr(S3Prefix, "open", refusing)
    with pytest.raises(StorageError, match="SlowDown"):
        apply_retention(four_sets, RetentionPolicy(keep=0), in_use=lambda stamp: False)
    monkeypatch.undo()
    assert stamps_left(four_sets) == STAMPS


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_retention_on_s3_leaves_a_set_alone_while_one_of_its_files_is_uploading(four_sets):
    start_upload(four_sets, f"langchain_pg_embedding_{STAMPS[0]}.csv")

    policy = RetentionPolicy(keep=1, pending_upload_max_age_s=3600)
    removed = apply_retention(four_sets, policy, in_use=lambda stamp: False)

    assert removed == [STAMPS[1]]
    assert stamps_left(four_sets) == [STAMPS[0], *STAMPS[2:]]
    assert four_sets.pending() == [f"langchain_pg_embedding_{STAMPS[0]}.csv"]  # young: not aborted


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_scheduled_retention_aborts_uploads_pending_longer_than_the_max_age(four_sets, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="common.retention")
    monkeypatch.setenv("VECTOR_RETENTION_KEEP", "1")
    uploading, orphan = (
        f"langchain_pg_embedding_{STAMPS[0]}.csv",
        "langchain_pg_embedding_20241231_000000.csv",
    )
    start_upload(four_sets, uploading)
    start_upload(four_sets, orphan)

    # The default age (a day): both uploads are young, and the set being written stays.
    assert apply_backup_retention()["removed"] == [STAMPS[1]]
    assert four_sets.pending() == sorted([uploading, orphan])

    monkeypatch.setenv("VECTOR_PENDING_UPLOAD_MAX_AGE", "0")
    done = apply_backup_retention()

    assert four_sets.pending() == [] and pending_keys(four_sets) == []
    assert done["removed"] == [STAMPS[0]]  # its upload was dead: nothing keeps the set now
    assert stamps_left(four_sets) == STAMPS[2:]
    assert f"retention aborted 2 upload(s) idle for more than 0 s in {four_sets.location}" in caplog.text


def test_a_stopped_runs_cleanup_aborts_its_pending_uploads(s3_root, task_id):
    settings = load_settings()
    storage = settings.backup_storage(task_id)
    stamp, other = "20250105_000000", "20250106_000000"
    with storage.writer(f"langchain_pg_collection_{stamp}.csv") as out:
        out.write(b"uuid,name,cmetadata\n")
    start_upload(storage, f"langchain_pg_embedding_{stamp}.csv")
    start_upload(storage, f"langchain_pg_embedding_{other}.csv")

    removed = discard_unfinished_set(settings, task_id, stamp)

    assert removed == [f"langchain_pg_collection_{stamp}.csv", f"langchain_pg_embedding_{stamp}.csv"]
    assert storage.names() == []
    assert storage.pending() == [f"langchain_pg_embedding_{other}.csv"]  # another run's: left alone


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_closing_a_set_aborts_its_own_dead_uploads_and_survives_a_storage_that_refuses(
    store, task_id, s3_root, monkeypatch, caplog
):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    settings = load_settings()
    storage = settings.backup_storage(task_id)
    stamp, other = "20250107_000000", "20250108_000000"
    request = RunRequest(
        run_id=uuid.uuid4().hex, task_id=task_id, timestamp=stamp, truncate_requested=False, external_db=False
    )
    tables = [back_up_table(settings, request, t) for t in settings.vector.supported_tables]
    start_upload(storage, f"langchain_pg_embedding_{stamp}.csv")  # an attempt whose abort failed
    start_upload(storage, f"langchain_pg_embedding_{other}.csv")

    result = close_backup_set(settings, request, tables)

    assert result["backup_performed"] and result["errors"] == []
    assert storage.pending() == [f"langchain_pg_embedding_{other}.csv"]

    def refuse(self, pattern="*", older_than_s=0.0):
        raise StorageError(f"{self.location}: listing uploads failed: access denied")

    monkeypatch.setattr(S3Prefix, "discard_pending", refuse)
    caplog.set_level(logging.WARNING, logger="common.run_steps")
    again = RunRequest(**{**request, "run_id": uuid.uuid4().hex, "timestamp": other})
    tables = [back_up_table(settings, again, t) for t in settings.vector.supported_tables]
    assert close_backup_set(settings, again, tables)["errors"] == []
    assert f"could not clear the leftovers of set {other}" in caplog.text


def test_runs_appending_to_one_s3_log_at_once_lose_no_block(s3_root, task_id):
    writers, blocks_each = 8, 4
    settings = load_settings()
    start = threading.Barrier(writers)
    failed: list[BaseException] = []

    def append(writer: int) -> None:
        storage = settings.backup_storage(task_id)  # each its own, as runs in other processes
        start.wait()
        try:
            for block in range(blocks_each):
                storage.append_text(LOG_NAME, f"=== run {writer} block {block} ===\nline\n\n")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert failed == []
    log = settings.backup_storage(task_id).open(LOG_NAME).read().decode()
    headers = [line for line in log.splitlines() if line.startswith("===")]
    assert sorted(headers) == sorted(
        f"=== run {w} block {b} ===" for w in range(writers) for b in range(blocks_each)
    )
    assert log.count("line\n\n") == writers * blocks_each  # every block whole


def test_a_set_in_s3_restores_what_was_backed_up(store, task_id, s3_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    before = {t: row_texts(store.conn, t) for t in TABLES}
    result = build_vector_workflow(task_id, backup=True, truncate=True).apply_async().get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 0

    done = restore_backup_set.delay(f"{result['backup_directory']}/{result['manifest']}").get(timeout=TIMEOUT)

    assert done["tables"]["langchain_pg_embedding"] == 310
    assert {t: row_texts(store.conn, t) for t in TABLES} == before


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_verify_from_the_command_line_reads_a_set_in_s3_and_prints_no_secret(
    store, task_id, s3_root, monkeypatch
):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    result = make_set(task_id, "20250109_000000")

    good = worker_cli("verify", f"{s3_root}/{task_id}/vector_bak")
    missing = worker_cli("verify", f"{s3_root}/{task_id}_none/vector_bak")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://key:{FAKE_S3_SECRET}@127.0.0.1:9")
    badly_configured = worker_cli("verify", f"{s3_root}/{task_id}/vector_bak")

    assert good.returncode == 0, good.stdout + good.stderr
    assert result["manifest"] in good.stdout and "✓" in good.stdout
    assert missing.returncode == 1 and "no manifest_*.json" in missing.stdout
    assert badly_configured.returncode == 1 and "must not carry credentials" in badly_configured.stdout
    for done in (good, missing, badly_configured):
        assert FAKE_S3_SECRET not in done.stdout + done.stderr
