"""The API is closed by default: no token, no public address; no cross-site simple POST."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from tests.processes import ROOT, project_env
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.embedded import free_port

BACKUP = "/api/v0/data_pipeline/vector/backup"


def api_process(*args: str, **env: str) -> subprocess.Popen:
    environment = project_env(**env)
    if "API_TOKEN" not in env:
        environment.pop("API_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "api", *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def answers(port: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/openapi.json", timeout=2) as r:
                return r.status
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("the API never answered")


def test_the_api_refuses_to_serve_a_public_address_without_a_token(services):
    refused = api_process("--host", "0.0.0.0", "--port", str(free_port()))
    out = refused.communicate(timeout=30)[0]

    assert refused.returncode != 0
    assert "refusing to serve the API on 0.0.0.0 without API_TOKEN" in out


@pytest.mark.parametrize(
    "args, env",
    [
        (["--host", "0.0.0.0", "--insecure-no-auth"], {}),
        (["--host", "0.0.0.0"], {"API_TOKEN": "a-token-for-this-test"}),
        (["--host", "127.0.0.1"], {}),
    ],
)
def test_the_api_serves_with_a_token_on_loopback_or_when_told_to(services, args, env):
    port = free_port()
    server = api_process(*args, "--port", str(port), **env)
    try:
        assert answers(port) == 200
    finally:
        server.terminate()
        server.wait(10)


def test_a_cross_site_simple_post_is_415_and_sends_nothing(services, task_id):
    broker = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    before = len(broker.keys("vector:run:*"))
    client = create_app().test_client()
    try:
        # What a web page can send without a preflight: text/plain with a JSON body.
        plain = client.post(BACKUP, data='{"truncate_vector_tables": true}', content_type="text/plain")
        form = client.post(
            BACKUP, data="truncate_vector_tables=true", content_type="application/x-www-form-urlencoded"
        )
    finally:
        release_pending_results()

    assert plain.status_code == 415 and plain.get_json()["data"]["error_type"] == "UNSUPPORTED_MEDIA"
    assert form.status_code == 415
    assert len(broker.keys("vector:run:*")) == before
    assert os.environ.get("API_TOKEN") is None


def test_without_a_token_only_loopback_names_are_served(services):
    client = create_app().test_client()
    try:
        rebound = client.get("/api/v0/data_pipeline/vector/backups", headers={"Host": "evil.example:8084"})
        local = client.get("/api/v0/data_pipeline/vector/backups", headers={"Host": "127.0.0.1:8084"})
    finally:
        release_pending_results()
    assert rebound.status_code == 403 and "only to localhost" in rebound.get_json()["data"]["response"]
    assert local.status_code == 200


@pytest.mark.parametrize(
    "name, value",
    [
        ("API_TOKEN", "change-me-to-a-long-random-token"),
        ("VECTOR_SIGNING_KEY", "change-me-to-32-random-characters"),
    ],
)
def test_the_placeholder_secrets_of_env_example_are_refused(services, name, value):
    server = api_process("--port", str(free_port()), **{name: value})
    out = server.communicate(timeout=30)[0]
    assert server.returncode != 0 and f"{name} is still .env.example's placeholder" in out
