"""Real services for every test: PostgreSQL with pgvector, Redis, an in-process worker.

`TEST_VECTOR_DB_URL` / `TEST_REDIS_URL` select external servers (the database must have
pgvector and be disposable: tests create and drop the LangChain tables in it); without
them, embedded servers are started for the session.
"""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import psycopg2
import pytest
from celery.result import AsyncResult

from worker.celery_app import release_pending_results
from worker.embedded import start_postgres, start_redis, start_s3
from worker.sample_store import add_collection, create_store, drop_store

# A password embedded servers ignore (trust auth), so leak tests have one to look for.
FAKE_PASSWORD = "pw-must-not-leak-7f3a"
# moto accepts any secret; leak tests look for this one.
FAKE_S3_SECRET = "s3-secret-must-not-leak-91c2"


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    started = []
    pg_url = os.environ.get("TEST_VECTOR_DB_URL")
    if not pg_url:
        server = start_postgres(tmp_path_factory.mktemp("pg"))
        started.append(server)
        pg_url = server.url.replace("postgres:@", f"postgres:{FAKE_PASSWORD}@", 1)
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        server = start_redis(tmp_path_factory.mktemp("redis"))
        started.append(server)
        redis_url = server.url
    task_root = tmp_path_factory.mktemp("training_data")
    env = {
        "VECTOR_DB_URL": pg_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "VECTOR_TASK_ROOT": str(task_root),
        # A run waiting for another run's database lock re-checks quickly in tests.
        "VECTOR_LOCK_RETRY_DELAY": "0.3",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from worker import app

    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # Results still subscribed to would unsubscribe at exit, against a stopped Redis,
    # retrying for 20 s. Unsubscribe now; results collected later have nothing left to do.
    gc.collect()
    release_pending_results()
    AsyncResult.__del__ = lambda self: None
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def celery_worker_session(services):
    """A real worker consuming from the real broker, in this process (two threads)."""
    from celery.contrib.testing.worker import start_worker

    from worker import app

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
    ) as running:
        yield running


@pytest.fixture
def db(services):
    conn = psycopg2.connect(services["VECTOR_DB_URL"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(params=["langchain_postgres", "langchain_community"])
def store(request, db):
    """An empty LangChain store of each schema, with one collection; dropped afterwards."""
    drop_store(db)
    create_store(db, request.param)
    collection_id = add_collection(db, request.param, "docs")
    yield Store(db, request.param, collection_id)
    drop_store(db)


class Store:
    def __init__(self, conn, kind: str, collection_id: str) -> None:
        self.conn = conn
        self.kind = kind
        self.collection_id = collection_id


@pytest.fixture
def task_id() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def task_root(services) -> Path:
    return Path(services["VECTOR_TASK_ROOT"])


@pytest.fixture(scope="session")
def s3_endpoint(services, tmp_path_factory):
    """A real S3 endpoint over HTTP: `TEST_S3_URL` (with the AWS credentials of the
    environment), else moto's server started for the session. The AWS variables are set
    for this process and every process it starts."""
    url = os.environ.get("TEST_S3_URL")
    server = None
    env = {"AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")}
    if not url:
        server = start_s3(tmp_path_factory.mktemp("s3"))
        url = server.url
        env.update(AWS_ACCESS_KEY_ID="AKIATESTVECTORBACKUP", AWS_SECRET_ACCESS_KEY=FAKE_S3_SECRET)
    env["AWS_ENDPOINT_URL"] = url
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if server is not None:
        server.stop()


@pytest.fixture
def s3_root(s3_endpoint, monkeypatch) -> str:
    """A new bucket; backups of this test go to `s3://<bucket>/training_data`
    (`VECTOR_STORAGE_URL`, read by the in-process worker at each task)."""
    from common.storage.s3_client import S3Options, s3_client

    bucket = "vb-" + uuid.uuid4().hex[:16]
    s3_client(S3Options.from_env()).create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/training_data"
    monkeypatch.setenv("VECTOR_STORAGE_URL", root)
    return root
