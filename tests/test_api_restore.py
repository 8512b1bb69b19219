"""`POST /api/v0/data_pipeline/vector/restore` and `GET …/restore/<job_id>` against real
Redis, real PostgreSQL and a real worker: a set's collections (or the whole set) restored
by the workers, the other collections' rows untouched."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import jsonschema
import pytest

from common import run_keys
from common.config import load_api_settings, load_settings
from common.exceptions import RestoreError
from common.redis_conn import redis_client, run_states
from tests.test_collection_restore import EMBEDDING, collection_rows, docs_and_beta_backed_up, row_versions
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.openapi import openapi_spec

pytestmark = pytest.mark.usefixtures("celery_worker_session")
RESTORE = "/api/v0/data_pipeline/vector/restore"


@pytest.fixture
def client(services):
    yield create_app().test_client()
    release_pending_results()


def post(client, body, **kwargs):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(RESTORE, data=data, content_type="application/json", **kwargs)


def conforms(answer, method: str, path: str, status: str) -> None:
    """The answer's body is what the OpenAPI description says (schemathesis never gets a
    real set to restore, so it never sees these)."""
    responses = openapi_spec()["paths"][path][method]["responses"]
    jsonschema.validate(answer.get_json(), responses[status]["content"]["application/json"]["schema"])


def finished(client, status_url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(status_url).get_json()["data"]
        if data["state"] in ("SUCCESS", "FAILURE"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"the restore job did not end: {data}")


def damaged_after_backup(store, task_id: str) -> tuple[str, list]:
    """Two collections backed up by a real run, then 'docs' damaged; (set name, docs as backed up)."""
    result, backed = docs_and_beta_backed_up(store, task_id)
    with store.conn.cursor() as cur:
        cur.execute(f"DELETE FROM {EMBEDDING} WHERE collection_id = %s", (store.collection_id,))
    timestamp = result["manifest"].removeprefix("manifest_").removesuffix(".json")
    return f"{task_id}~{timestamp}", backed


@pytest.fixture
def backed_up(store, task_id):
    return damaged_after_backup(store, task_id)


def test_a_collection_is_restored_through_the_api_and_the_others_stay(client, store, backed_up):
    name, backed = backed_up
    beta = row_versions(store.conn, "beta")

    answer = post(client, {"set": name, "collections": ["docs"]})

    assert answer.status_code == 202, answer.get_json()
    conforms(answer, "post", RESTORE, "202")
    data = answer.get_json()["data"]
    assert answer.headers["Location"] == data["status_url"]
    job = finished(client, data["status_url"])
    conforms(client.get(data["status_url"]), "get", f"{RESTORE}/{{job_id}}", "200")
    assert job["state"] == "SUCCESS", job
    assert job["set"] == name and job["collections"] == ["docs"]
    assert job["result"]["strategy"] == "collections"
    assert job["result"]["collections"]["docs"]["rows"] == 10
    assert collection_rows(store.conn, "docs") == backed
    assert row_versions(store.conn, "beta") == beta


def test_a_collection_is_restored_from_object_storage(s3_root, store, task_id, task_root):
    name, backed = damaged_after_backup(store, task_id)
    web = create_app().test_client()  # after s3_root: the API reads VECTOR_STORAGE_URL once

    job = finished(web, post(web, {"set": name, "collections": ["docs"]}).get_json()["data"]["status_url"])

    assert job["state"] == "SUCCESS", job
    assert job["result"]["manifest"] == f"manifest_{name.split('~')[1]}.json"
    assert not list((task_root / task_id).rglob("manifest_*"))  # the set is only in the bucket
    assert collection_rows(store.conn, "docs") == backed


def test_the_whole_set_is_restored_only_when_asked_by_name(client, store, backed_up):
    name, backed = backed_up

    refused = post(client, {"set": name})
    assert refused.status_code == 400
    assert "whole_set: true" in refused.get_json()["data"]["response"]
    assert collection_rows(store.conn, "docs")[1] == []

    job = finished(client, post(client, {"set": name, "whole_set": True}).get_json()["data"]["status_url"])

    assert job["state"] == "SUCCESS" and job["collections"] is None, job
    assert job["result"]["strategy"] != "collections"
    assert collection_rows(store.conn, "docs") == backed


def test_a_collection_the_set_lacks_fails_the_job_and_changes_nothing(client, store, backed_up):
    name, _ = backed_up
    beta = row_versions(store.conn, "beta")

    job = finished(
        client, post(client, {"set": name, "collections": ["nope"]}).get_json()["data"]["status_url"]
    )

    assert job["state"] == "FAILURE"
    assert job["error"]["error_type"] == "RESTORE_FAILED" and "nope" in job["error"]["reason"], job
    assert collection_rows(store.conn, "docs")[1] == []
    assert row_versions(store.conn, "beta") == beta


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"set": "x~1", "collections": ["a"], "whole_set": True}, "not both"),
        ({"set": "x~1", "whole_set": False}, "whole_set: true"),
        ({"set": "x~1", "collections": []}, "collections must be a list"),
        ({"set": "x~1", "collections": "docs"}, "collections must be a list"),
        ({"set": "x~1", "collections": [""]}, "collections must be a list"),
        ({"collections": ["a"]}, "set must be"),
        ({"set": "x~1", "collections": ["a"], "db_connection": "postgresql://u:p@h/d"}, "unknown field"),
        ([], "JSON object"),
        ({"set": "x~1", "whole_set": True, "collections": None}, "collections must be a list"),
        ({"set": "x~1", "collections": ["docs"], "whole_set": None}, "whole_set must be true or false"),
        ('{"set": "x~1", "collections": ["\\ud800"]}', "collections must be a list"),
        ({"set": "x~1", "collections": ["a\u0000b"]}, "collections must be a list"),
    ],
)
def test_a_malformed_body_is_refused(client, body, why):
    answer = post(client, body)

    assert answer.status_code == 400 and why in answer.get_json()["data"]["response"], answer.get_json()
    assert "postgresql://u:p" not in answer.get_data(as_text=True)


def test_a_restore_waits_for_a_live_run_of_the_database(client, store, backed_up):
    name, _ = backed_up
    settings = load_settings()
    run_id = uuid.uuid4().hex
    run_states(settings).create(run_id, "t_busy", settings.database.identity, False)  # queued
    try:
        answer = post(client, {"set": name, "collections": ["docs"]})
    finally:
        redis_client(settings.runs.redis_url).hset(run_keys.run_state(run_id), "state", "cancelled")

    assert answer.status_code == 409 and answer.headers["Retry-After"] == "30"
    data = answer.get_json()["data"]
    assert data["error_type"] == "RUN_IN_PROGRESS" and data["job_id"] == run_id and data["can_retry"]
    conforms(answer, "post", RESTORE, "409")
    assert collection_rows(store.conn, "docs")[1] == []


def test_a_restore_task_that_finds_a_live_run_restores_nothing(store, backed_up):
    from tasks.backup_sets import restore_backup_set

    name, _ = backed_up
    settings = load_settings()
    run_id = uuid.uuid4().hex
    run_states(settings).create(run_id, "t_busy", settings.database.identity, False)  # queued
    try:
        with pytest.raises(
            RestoreError, match=f"run {run_id} of .* is queued or running; nothing was restored"
        ):
            restore_backup_set.delay(name, collections=["docs"]).get(timeout=60)
    finally:
        redis_client(settings.runs.redis_url).hset(run_keys.run_state(run_id), "state", "cancelled")
    assert collection_rows(store.conn, "docs")[1] == []


def test_unknown_sets_jobs_and_media_are_refused(client, task_id):
    assert post(client, {"set": f"{task_id}~20200101_000000", "collections": ["docs"]}).status_code == 404
    assert post(client, {"set": "../etc~x", "whole_set": True}).status_code == 404
    assert client.get(f"{RESTORE}/{'0' * 32}").status_code == 404
    assert client.get(f"{RESTORE}/not-an-id").status_code == 404
    text = client.post(RESTORE, data='{"set": "x~1", "whole_set": true}', content_type="text/plain")
    assert text.status_code == 415


def test_a_restore_needs_the_token_when_one_is_set(services, backed_up, store):
    api = dataclasses.replace(load_api_settings(), token="a-token-for-this-test")
    web = create_app(api=api).test_client()
    name, _ = backed_up

    assert post(web, {"set": name, "whole_set": True}).status_code == 401
    assert collection_rows(store.conn, "docs")[1] == []
    bearer = {"Authorization": "Bearer a-token-for-this-test"}
    allowed = post(web, {"set": name, "collections": ["docs"]}, headers=bearer)
    assert allowed.status_code == 202
    status_url = allowed.get_json()["data"]["status_url"]
    assert web.get(status_url).status_code == 401
    deadline = time.monotonic() + 60
    while web.get(status_url, headers=bearer).get_json()["data"]["state"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert collection_rows(store.conn, "docs")[1] != []
