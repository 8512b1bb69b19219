"""Object storage failing, and files no fixed part size could hold, against real S3
endpoints (moto's server, `TEST_S3_URL`), with a TCP proxy cutting the network where a
test needs it; nothing of S3 is mocked."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from fnmatch import fnmatch
from urllib.parse import urlsplit

import boto3
import pytest
import redis
from celery.result import AsyncResult

from common.backup import backup_table
from common.config import VectorTableManagement, load_settings
from common.exceptions import BackupFailedError, ConfigurationError, StorageError
from common.export import export_csv
from common.manifest import verify_set
from common.restore import restore_set
from common.storage.s3 import S3Prefix
from common.storage.s3_client import MIB, S3Options, s3_client
from common.storage.s3_upload import MAX_PART_BYTES, MAX_PARTS, MultipartWriter, Upload, part_size
from common.table_job import TableJob
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tasks.scheduled import apply_backup_retention
from tests.conftest import FAKE_S3_SECRET
from tests.processes import ROOT, project_env, worker_cli
from tests.tcp_proxy import TcpProxy
from tests.test_processes import isolated
from tests.test_worker_killed import start_worker, stop
from worker.embedded import start_s3
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

TIB = 1 << 40
MAX_OBJECT_BYTES = 5 * TIB  # S3's largest object


def new_bucket(options: S3Options) -> str:
    bucket = "vb-" + uuid.uuid4().hex[:16]
    s3_client(options).create_bucket(Bucket=bucket)
    return bucket


def parts_of(size: int, first: int) -> int:
    """How many parts the writer cuts `size` bytes into."""
    number, cut = 0, 0
    while cut < size:
        number += 1
        cut += part_size(first, number)
    return number


@pytest.mark.parametrize("first_mib", [5, 8, 1024])
def test_growing_parts_reach_s3_s_largest_object_within_10_000_parts(first_mib):
    """Fixed 8 MiB parts stop at 78 GiB (10,000 parts); growing ones pass 5 TiB from
    any first size the configuration allows (5 MiB up), none larger than S3's 5 GiB."""
    first = first_mib * MIB
    sizes = [part_size(first, n) for n in range(1, MAX_PARTS + 1)]

    assert sum(sizes) >= MAX_OBJECT_BYTES
    assert max(sizes) <= MAX_PART_BYTES
    assert sizes == sorted(sizes) and sizes[0] == first
    assert MAX_PARTS * 8 * MIB < 80 * (1 << 30)  # what a writer of one part size reaches


@pytest.fixture(scope="module")
def small_parts_s3(tmp_path_factory, s3_endpoint):
    """A moto server accepting 1 KiB parts, so 10,000 parts make a 10 MB file, not 50 GB."""
    if os.environ.get("TEST_S3_URL"):
        pytest.skip("a real store's 5 MiB smallest part would need a 50 GB file")
    server = start_s3(tmp_path_factory.mktemp("s3_small_parts"), min_part_bytes=1024)
    yield server.url
    server.stop()


@pytest.mark.slow
def test_a_file_larger_than_10_000_first_parts_is_written_whole(small_parts_s3):
    """About 3,400 parts (14 s here): the fewest that pass 10,000 first parts."""
    options = S3Options(endpoint=small_parts_s3, part_size=1024, uploads=8)
    storage = S3Prefix(new_bucket(options), "big", options=options)
    size = MAX_PARTS * 1024 + 300_000
    data = random.Random(7).randbytes(size)

    with storage.writer("embedding.csv") as out:
        for start in range(0, size, 7_777):  # odd writes: parts are cut at their sizes anyway
            out.write(data[start : start + 7_777])

    head = s3_client(options).head_object(Bucket=storage.bucket, Key=storage.key("embedding.csv"))
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart object's ETag ends -N
    assert parts == parts_of(size, 1024) < MAX_PARTS < -(-size // 1024)
    with storage.open("embedding.csv") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.stat("embedding.csv").size == size


@pytest.fixture
def proxy(s3_endpoint):
    """A TCP proxy in front of the session's S3 endpoint (plain HTTP only: a TLS
    endpoint's certificate does not name the proxy)."""
    parts = urlsplit(s3_endpoint)
    if parts.scheme != "http":
        pytest.skip("the proxy relays plain HTTP endpoints only")
    running = TcpProxy((parts.hostname, parts.port or 80)).start()
    yield running
    running.stop()


def through(proxy: TcpProxy, **options) -> S3Options:
    """The environment's S3 options, with the proxy as the endpoint."""
    return dataclasses.replace(S3Options.from_env(), endpoint=proxy.url, **options)


def test_a_read_that_loses_its_connection_resumes_from_the_byte_it_reached(proxy):
    direct = S3Options.from_env()
    storage = S3Prefix(new_bucket(direct), "vector_bak", options=through(proxy, timeout_s=5))
    data = random.Random(5).randbytes(8 * MIB)
    s3_client(direct).put_object(Bucket=storage.bucket, Key=storage.key("embedding.csv"), Body=data)
    proxy.cut_after = 3 * MIB  # every connection dies after 3 MiB of an answer

    with storage.open("embedding.csv") as stored:
        read = stored.read()

    assert hashlib.sha256(read).hexdigest() == hashlib.sha256(data).hexdigest()
    assert proxy.connections >= 3  # the first GET and at least two resumed ones


def test_a_read_does_not_resume_into_an_object_replaced_meanwhile(proxy):
    direct = S3Options.from_env()
    storage = S3Prefix(new_bucket(direct), "vector_bak", options=through(proxy, timeout_s=5))
    key = storage.key("embedding.csv")
    s3_client(direct).put_object(Bucket=storage.bucket, Key=key, Body=b"a" * (8 * MIB))
    proxy.cut_after = 3 * MIB

    with storage.open("embedding.csv") as stored:
        assert stored.read(MIB) == b"a" * MIB
        s3_client(direct).put_object(Bucket=storage.bucket, Key=key, Body=b"b" * (8 * MIB))
        with pytest.raises(StorageError, match=r"reading embedding\.csv failed: the object changed"):
            stored.read()


class StuckFirstPart(Upload):
    """A real upload whose first part is stuck on a slow link until `release` is set."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.release, self.sent = threading.Event(), []
        threading.Timer(15, self.release.set).start()  # a writer that waits fails the test, not hangs it

    def send(self, number: int, data: bytes):
        self.sent.append(number)
        if number == 1:
            self.release.wait()
        return super().send(number, data)


def test_a_failed_part_fails_the_next_write_and_finish_without_waiting_for_slower_parts(s3_endpoint):
    options = S3Options.from_env()
    storage = S3Prefix(new_bucket(options), "vector_bak", options=options)
    upload = StuckFirstPart(storage.client, storage.bucket, storage.key("embedding.csv"), storage.location)
    writer = MultipartWriter(upload, first_part=64 * 1024, uploads=2, replace=False)
    try:
        writer.write(b"x" * 64 * 1024)  # part 1 starts the upload, and sticks
        # A cleanup aborts the upload meanwhile: every later part fails at once.
        storage.client.abort_multipart_upload(
            Bucket=storage.bucket, Key=upload.key, UploadId=upload.upload_id
        )
        writer.write(b"y" * 64 * 1024)  # part 2
        deadline = time.monotonic() + 10
        # (S3 answers NoSuchUpload; moto a 500 after botocore's retries.)
        with pytest.raises(StorageError, match="uploading part 2 failed: the"):
            while time.monotonic() < deadline:
                writer.write(b"z" * 1000)  # a part cut here waits for a slot, and is never sent
                time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(StorageError, match="uploading part 2 failed"):
            writer.finish()
        assert time.monotonic() - started < 2, "finish waited for the stuck part"
        assert upload.sent == [1, 2]  # nothing was sent after the failure
    finally:
        upload.release.set()
        writer.abort()
    assert storage.pending() == [] and storage.names() == []


def uploaded_parts(client, bucket: str, pattern: str) -> int:
    """Parts stored so far of the uploads in progress whose names match `pattern`."""
    found = 0
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        if fnmatch(upload["Key"].rsplit("/", 1)[-1], pattern):
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            found += len(parts.get("Parts", []))
    return found


@pytest.mark.usefixtures("celery_worker_session")
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_an_endpoint_lost_mid_upload_fails_the_run_clearly_and_truncates_nothing(
    store, task_id, s3_root, proxy, monkeypatch
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 20_000, dim=128)
    direct = s3_client(S3Options.from_env())
    bucket = s3_root.split("/")[2]
    for name, value in {
        "AWS_ENDPOINT_URL": proxy.url,
        "VECTOR_S3_TIMEOUT": "3",
        "VECTOR_S3_PART_SIZE_MB": "5",
        "VECTOR_S3_UPLOADS": "1",  # parts one after the other: the first is whole before the stall
        "VECTOR_SPLIT_WORKERS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    proxy.hold_after = 6 * MIB  # past the first 5 MiB part: the link hangs in the second

    answer = enqueue_vector_management(task_id, truncate=True)
    deadline = time.monotonic() + 60
    while uploaded_parts(direct, bucket, "langchain_pg_embedding_*") < 1:
        assert time.monotonic() < deadline, "the first part never arrived"
        time.sleep(0.05)
    proxy.stop()  # the endpoint goes away with a part stored and the next one in flight
    stopped = time.monotonic()
    with pytest.raises(BackupFailedError) as failure:
        run_result(run_record(answer["run_id"])).get(timeout=90)

    error = str(failure.value)
    assert time.monotonic() - stopped < 30, "the failure must surface within a few timeouts"
    # The run's error is the table's own, then that the set log could not be written either.
    assert error.startswith(
        f"backup failed: langchain_pg_embedding: storage error while copying: {s3_root}/{task_id}"
        "/vector_bak: uploading part 2 failed: the storage endpoint cannot be reached"
    ), error
    assert "the set log could not be written" in error
    assert "Traceback" not in error and FAKE_S3_SECRET not in repr(failure.value.args)
    assert count_rows(store.conn, "langchain_pg_embedding") == 20_000  # nothing truncated
    tables = {table: AsyncResult(tid).result for tid, table in run_record(answer["run_id"])["tables"].items()}
    copied = tables["langchain_pg_embedding"]
    assert not copied["success"] and FAKE_S3_SECRET not in copied["error"]
    assert re.fullmatch(
        rf"langchain_pg_embedding: storage error while copying: {re.escape(s3_root)}/\w+/vector_bak: "
        r"uploading part 2 failed: the storage endpoint cannot be reached",
        copied["error"],
    ), copied["error"]

    proxy.hold_after = None
    proxy.start()  # the endpoint is back
    storage = load_settings().backup_storage(task_id)
    assert storage.names("langchain_pg_embedding_*") == [] and storage.names("manifest_*") == []
    # The writer's abort and the set's close could not reach the endpoint either: the upload
    # stays pending (invisible, billed) until retention finds it idle past its age.
    assert [n.startswith("langchain_pg_embedding_") for n in storage.pending()] == [True]
    monkeypatch.setenv("VECTOR_PENDING_UPLOAD_MAX_AGE", "0")
    assert apply_backup_retention()["aborted_uploads"] == 1
    assert storage.pending() == [] and direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


WRONG_SECRET = "wrong-s3-secret-must-not-leak-5e1d"


@dataclasses.dataclass
class SignedS3:
    url: str
    bucket: str
    key_id: str
    secret: str


@pytest.fixture
def s3_checking_signatures(tmp_path, s3_endpoint):
    """An S3 endpoint that checks signatures, with a bucket and a key that may use it.

    moto accepts any credentials unless its IAM authentication is on (after
    `INITIAL_NO_AUTH_ACTION_COUNT` requests, or once its reset-auth API sets that count):
    a user, its access key and an s3:* policy are made first, then requests are checked.
    """
    if os.environ.get("TEST_S3_URL"):  # a real store checks signatures: use the environment's key
        bucket = new_bucket(S3Options.from_env())
        yield SignedS3(
            s3_endpoint, bucket, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        )
        return
    server = start_s3(tmp_path / "s3_signed")
    try:
        admin = {"endpoint_url": server.url, "region_name": "us-east-1"}
        admin.update(aws_access_key_id="AKIAMOTOSETUP", aws_secret_access_key="moto-setup")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="vector-backup")
        key = iam.create_access_key(UserName="vector-backup")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="vector-backup", PolicyName="s3", PolicyDocument=json.dumps(policy))
        bucket = "vb-" + uuid.uuid4().hex[:16]
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        reset = urllib.request.Request(
            f"{server.url}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(reset, timeout=5).close()  # from now on every request is checked
        yield SignedS3(server.url, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


def everything_in(broker: redis.Redis) -> bytes:
    """Every value the Redis database holds, whatever its type."""
    found = []
    for key in broker.scan_iter():
        kind = broker.type(key)
        if kind == b"string":
            found.append(broker.get(key))
        elif kind == b"list":
            found += broker.lrange(key, 0, -1)
        elif kind == b"hash":
            found += [k + b"=" + v for k, v in broker.hgetall(key).items()]
        elif kind == b"set":
            found += list(broker.smembers(key))
        elif kind == b"zset":
            found += broker.zrange(key, 0, -1)
        found.append(key)
    return b"\n".join(found)


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m worker ARGS` in `env`, its output captured as text."""
    command = [sys.executable, "-m", "worker", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_wrong_secret_fails_the_run_saying_so_and_the_secret_is_nowhere(
    store, services, task_id, tmp_path, s3_checking_signatures
):
    """Workers whose secret is wrong (a rotated key, say) fail the run; a client with it
    is refused before sending one; verify says so too. Neither secret is written anywhere."""
    signed = s3_checking_signatures
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    url = isolated(services["CELERY_BROKER_URL"], 13)
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    good = project_env(
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        AWS_ENDPOINT_URL=signed.url,
        AWS_ACCESS_KEY_ID=signed.key_id,
        AWS_SECRET_ACCESS_KEY=signed.secret,
        VECTOR_STORAGE_URL=f"s3://{signed.bucket}/training_data",
        VECTOR_SPLIT_WORKERS="1",
    )
    wrong = {**good, "AWS_SECRET_ACCESS_KEY": WRONG_SECRET}
    log = tmp_path / "worker.log"
    worker = start_worker(wrong, log)
    try:
        ran = cli(good, "run", "--task-id", task_id, "--truncate-vector-tables", "--json")
    finally:
        stop(worker)
    refused = cli(wrong, "run", "--task-id", task_id + "_again", "--truncate-vector-tables")
    directory = f"s3://{signed.bucket}/training_data/{task_id}/vector_bak"
    verified = cli(wrong, "verify", directory)

    cause = "the secret key does not match the access key (check AWS_SECRET_ACCESS_KEY)"
    run_error = json.loads(ran.stdout.splitlines()[-1])["error"]
    assert ran.returncode == 1 and cause in run_error and "ChordError" not in run_error, ran.stdout
    assert refused.returncode == 1 and cause in refused.stdout + refused.stderr  # nothing sent
    assert verified.returncode == 1 and f"✗ {directory}: listing failed: {cause}" in verified.stdout
    worker_log = log.read_text()
    assert cause in worker_log
    written = {
        "run": ran.stdout + ran.stderr,
        "refused run": refused.stdout + refused.stderr,
        "verify": verified.stdout + verified.stderr,
        "worker log": worker_log,
        "redis (task meta, run records, events)": everything_in(broker).decode("utf-8", "replace"),
    }
    for n, secret in enumerate((signed.secret, WRONG_SECRET, FAKE_S3_SECRET)):
        assert [where for where, text in written.items() if secret in text] == [], f"secret {n} leaked"
    # Nothing was written with the wrong secret: no table file, manifest, set log or upload.
    owner = boto3.client(
        "s3",
        endpoint_url=signed.url,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=signed.key_id,
        aws_secret_access_key=signed.secret,
    )
    assert owner.list_objects_v2(Bucket=signed.bucket).get("Contents", []) == []
    assert owner.list_multipart_uploads(Bucket=signed.bucket).get("Uploads", []) == []


def test_an_endpoint_url_carrying_credentials_is_refused_without_echoing_them(s3_root, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://AKIAINURL:secret-in-url-5a7c@127.0.0.1:9")

    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    verified = worker_cli("verify", f"{s3_root}/t_nothing/vector_bak")

    assert "must not carry credentials" in str(refused.value)
    assert verified.returncode == 1 and "must not carry credentials" in verified.stdout
    for text in (str(refused.value), verified.stdout, verified.stderr):
        assert "secret-in-url" not in text and "AKIAINURL" not in text


TABLES = ("langchain_pg_collection", "langchain_pg_embedding")


def random_documents(conn, chars: int) -> None:
    """Documents of random hex, which zstd only halves: a few thousand rows pass 5 MiB."""
    with conn.cursor() as cur:  # `|| id` makes PostgreSQL draw each row's text anew
        cur.execute(
            "UPDATE langchain_pg_embedding SET document = "
            "array_to_string(ARRAY(SELECT md5(random()::text || id) FROM generate_series(1, %s)), '')",
            (chars // 32,),
        )


@pytest.mark.usefixtures("celery_worker_session")
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.parametrize(
    ("file_format", "compression", "rows", "suffix"),
    [
        ("csv", "zstd", 1_000, ".csv.zst"),
        ("csv", "gzip", 1_000, ".csv.gz"),
        ("binary", "zstd", 3_500, ".pgcopy.zst"),  # compressed, yet more than one 5 MiB part
    ],
)
def test_compressed_and_binary_sets_on_s3_verify_and_restore_the_same_rows(
    store, task_id, s3_root, tmp_path, monkeypatch, file_format, compression, rows, suffix
):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, rows, dim=16, random_vectors=True)
    if file_format == "binary":
        random_documents(store.conn, 3_200)
    before = {t: row_texts(store.conn, t) for t in TABLES}
    # The same rows as a local CSV backup, for a binary set's export to equal byte for byte.
    csv_job = TableJob("", tmp_path / "csv", "0", VectorTableManagement())
    as_csv = {t: backup_table(store.conn, dataclasses.replace(csv_job, table=t)) for t in TABLES}
    for name, value in {
        "VECTOR_BACKUP_FORMAT": file_format,
        "VECTOR_BACKUP_COMPRESSION": compression,
        "VECTOR_SPLIT_WORKERS": "1",
        "VECTOR_S3_PART_SIZE_MB": "5",
    }.items():
        monkeypatch.setenv(name, value)

    answer = enqueue_vector_management(task_id, truncate=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=90)

    assert result["truncate_performed"] and count_rows(store.conn, "langchain_pg_embedding") == 0
    directory = result["backup_directory"]
    assert directory == f"{s3_root}/{task_id}/vector_bak"
    embedding = result["tables_backed_up"]["langchain_pg_embedding"]
    assert embedding["backup_file"].endswith(suffix) and embedding["row_count"] == rows + 10
    manifest = verify_set(directory, deep=True)
    assert {e["format"] for e in manifest["tables"].values()} == {file_format}
    storage = load_settings().backup_storage(task_id)
    head = storage.client.head_object(Bucket=storage.bucket, Key=storage.key(embedding["backup_file"]))
    if file_format == "binary":
        assert head["ContentLength"] > 5 * MIB and int(head["ETag"].strip('"').rsplit("-", 1)[1]) >= 2
        exported = export_csv(directory, tmp_path / "exported")
        for table, _, _ in exported:
            name = f"{table}_{result['timestamp']}.csv"
            assert (tmp_path / "exported" / name).read_bytes() == (
                tmp_path / "csv" / as_csv[table]["backup_file"]
            ).read_bytes()

    restore_set(store.conn, directory)

    assert {t: row_texts(store.conn, t) for t in TABLES} == before


def test_a_completion_retried_after_it_succeeded_is_taken_as_done_and_never_overwrites(s3_root):
    """botocore retries a completion whose answer was lost; with If-None-Match the retry
    is refused (412) although the object is this upload's: that is success. An upload of
    other parts under the same name is still refused."""
    storage = S3Prefix(*s3_root[len("s3://") :].split("/", 1))
    first = storage.upload("t_1.csv")
    first.start()
    parts = [first.send(1, b"a" * (5 * MIB)), first.send(2, b"b" * 100)]
    first.complete(parts, replace=False)

    storage.upload("t_1.csv", first.upload_id).complete(parts, replace=False)  # the retry

    other = storage.upload("t_1.csv")
    other.start()
    with pytest.raises(StorageError, match="the object changed or appeared meanwhile"):
        other.complete([other.send(1, b"c" * 10)], replace=False)
    assert storage.open("t_1.csv").read() == b"a" * (5 * MIB) + b"b" * 100


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE:SECRETX@bucket/p",
        "s3://bucket/p?X-Amz-Security-Token=SECRETX",
        "s3://b/p/SECRETX..x/",
    ],
)
def test_a_storage_url_that_is_refused_is_never_echoed(url):
    with pytest.raises(ConfigurationError) as refused:
        load_settings({"VECTOR_STORAGE_URL": url})
    assert "SECRETX" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
