"""Schemathesis against `/api/v0/openapi.json`: generated requests get no 5xx, and every
response matches the description. Bounded in examples; real Redis, PostgreSQL, worker."""

from __future__ import annotations

import dataclasses

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from common.config import load_api_settings
from worker.api import create_app
from worker.celery_app import release_pending_results

pytestmark = pytest.mark.usefixtures("celery_worker_session")


@pytest.fixture
def web(services):
    # No waiting: a generated body that is valid sends a real run and gets 202 at once.
    yield create_app(api=dataclasses.replace(load_api_settings(), wait_s=0.0))
    release_pending_results()


def test_generated_requests_get_no_server_error_and_match_the_spec(web):
    # schemathesis' pytest plugin does not load under pytest 9, so each operation's
    # strategy is driven by hypothesis directly.
    schema = schemathesis.openapi.from_wsgi("/api/v0/openapi.json", web)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, [op.label for op in operations]

    calls = []
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            calls.append(case.call_and_validate())

        check()
    assert len(calls) > 50 and not any(r.status_code >= 500 for r in calls)
