"""A request's `db_connection` reaches libpq only as user, password, host, port and database
on the allow-list (plus `sslmode` and `connect_timeout`), pinned to the address checked."""

from __future__ import annotations

import dataclasses
import json

import pytest
import redis

from common.config import load_api_settings
from tests.conftest import FAKE_PASSWORD
from worker.api import create_app
from worker.api_params import ForbiddenDatabase, check_db_connection
from worker.celery_app import release_pending_results
from worker.embedded import free_port

BACKUP = "/api/v0/data_pipeline/vector/backup"
ALLOWED = f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:5432/db"


def api(hosts: str):
    return dataclasses.replace(load_api_settings(), allowed_db_hosts=tuple(hosts.split(",")))


def ask(hosts: str, url: str):
    client = create_app(api=api(hosts)).test_client()
    try:
        return client.post(BACKUP, json={"db_connection": url})
    finally:
        release_pending_results()


@pytest.mark.parametrize(
    "url",
    [
        ALLOWED + "?hostaddr=127.0.0.2",  # the allow-list bypass: libpq would connect there
        ALLOWED + "?options=-c%20search_path%3Devil",
        ALLOWED + "?service=other",
        ALLOWED + "?passfile=/etc/passwd",
        ALLOWED + "?sslrootcert=/etc/passwd",
        ALLOWED + "?sslmode=bogus",
        ALLOWED + "?connect_timeout=0",
        ALLOWED + "?connect_timeout=%C2%B2",  # a digit to str.isdigit, not to int()
        ALLOWED + "?sslmode=require&sslmode=disable",
        ALLOWED + "?host=127.0.0.2",
        ALLOWED + "#fragment",
        f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:5x5/db",
        f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:5432,127.0.0.2:5432/db",
        f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:99999/db",
        "postgresql://127.0.0.1:5432/db",
        "postgresql://u@127.0.0.1:5432/db",  # no password: libpq would look in ~/.pgpass
        f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:5432/",
        f"mysql://u:{FAKE_PASSWORD}@127.0.0.1/db",
    ],
)
def test_anything_but_the_plain_url_form_is_400_and_sends_nothing(services, url):
    broker = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    before = len(broker.keys("vector:run:*"))

    answer = ask("127.0.0.1", url)

    assert answer.status_code == 400, answer.get_json()
    assert FAKE_PASSWORD not in answer.get_data(as_text=True)
    assert len(broker.keys("vector:run:*")) == before


def test_a_listed_name_that_resolves_to_an_address_off_the_list_is_403(services):
    answer = ask("localhost,10.9.9.0/24", f"postgresql://u:{FAKE_PASSWORD}@localhost:5432/db")

    assert answer.status_code == 403
    assert "resolves to" in answer.get_json()["data"]["response"]
    assert "not allowed" in answer.get_json()["data"]["response"]


def test_a_name_is_pinned_to_the_address_checked(services):
    settings = api("localhost,127.0.0.0/8,::1/128")
    target, url = check_db_connection(
        f"postgresql://u:{FAKE_PASSWORD}@localhost:5432/db?sslmode=disable", settings
    )

    hostaddr = dict(target.options)["hostaddr"]
    assert hostaddr in ("127.0.0.1", "::1") and f"hostaddr={hostaddr.replace(':', '%3A')}" in url
    assert target.host == "localhost" and "sslmode=disable" in url
    with pytest.raises(ForbiddenDatabase, match="is not allowed"):
        check_db_connection(f"postgresql://u:{FAKE_PASSWORD}@127.0.0.2:5432/db", settings)


def test_a_connection_failure_is_a_generic_503(services):
    closed = f"postgresql://u:{FAKE_PASSWORD}@127.0.0.1:{free_port()}/db"

    answer = ask("127.0.0.1", closed)

    body = json.dumps(answer.get_json())
    assert answer.status_code == 503 and "cannot be reached now" in body
    assert "refused" not in body.lower() and "timeout" not in body.lower()
    assert FAKE_PASSWORD not in body
