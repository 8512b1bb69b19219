"""The API's run routes: start a run (and wait for it, within bounds), read a job, cancel
one. Each parses, checks, calls one client function and wraps the answer in the envelope."""

from __future__ import annotations

import logging
import re
import threading

from celery.result import AsyncResult
from flask import Flask, Response, request, url_for

from common.catalog import task_exists
from common.config import ApiSettings, Settings
from common.db import DatabaseTarget, connect
from common.exceptions import ConfigurationError, DatabaseUnavailableError, RunNotCancellable
from common.redis_conn import redis_client, run_states
from tasks.client.enqueue import claim_key, enqueue_vector_management
from tasks.client.polling import wait_for_end
from tasks.client.runs import cancel_run, run_record, run_result, run_status
from worker import envelope
from worker.api_http import busy, not_json, reply, unsupported_media
from worker.api_params import (
    BackupParams,
    ForbiddenDatabase,
    InvalidParams,
    check_db_connection,
    parse_backup_body,
)
from worker.api_views import failure, job_status, run_data, run_view, stopped_error
from worker.openapi import PREFIX

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger("worker.api")


class RunRoutes:
    """`POST /backup`, `GET /backup/<job_id>`, `DELETE /backup/<job_id>`."""

    def __init__(self, settings: Settings, api: ApiSettings) -> None:
        self.settings, self.api = settings, api
        # A waiting request holds a server thread: past the limit, the answer is 202 at once.
        self.waiting = (
            threading.BoundedSemaphore(api.max_waiting) if api.max_waiting else threading.Semaphore(0)
        )
        self.broker = redis_client(settings.runs.redis_url)

    def register(self, web: Flask) -> None:
        web.add_url_rule(f"{PREFIX}/backup", "backup", self.backup, methods=["POST"])
        web.add_url_rule(f"{PREFIX}/backup/<job_id>", "job", self.job, methods=["GET"])
        web.add_url_rule(f"{PREFIX}/backup/<job_id>", "cancel_job", self.cancel_job, methods=["DELETE"])

    def backup(self) -> Response:
        body = request.get_data(cache=False)
        if not_json(body):
            return reply(unsupported_media())
        try:
            params = parse_backup_body(body)
            target, run_url = self.settings.database, None
            if params.db_connection:
                target, run_url = check_db_connection(params.db_connection, self.api)
        except InvalidParams as exc:
            return reply(envelope.bad_request_response(str(exc)))
        except ForbiddenDatabase as exc:
            return reply(envelope.forbidden_response(str(exc)))
        if params.task_id and not task_exists(self.settings, params.task_id):
            return reply(envelope.not_found_response(f"task directory not found: {params.task_id}"))
        if not params.backup:
            return reply(envelope.success_response(run_data(None, None)))
        return self.refused(params, target) or self.start(params, run_url)

    def refused(self, params: BackupParams, target: DatabaseTarget) -> Response | None:
        """503 for a database that cannot be reached, 429 when it has too many runs."""
        return unreachable(target) or self.too_many_runs(params.task_id, params.truncate, target)

    def start(self, params: BackupParams, run_url: str | None) -> Response:
        answer = enqueue_vector_management(
            params.task_id,
            backup=True,
            truncate=params.truncate,
            db_connection=run_url,
            settings=self.settings,
        )
        job_id = answer["run_id"]
        final = run_result(run_record(job_id, self.settings))
        if params.wait and self.waiting.acquire(blocking=False):
            try:
                waited = wait_for_end(job_id, final, self.api.wait_s, self.settings, every=0.2)
            finally:
                self.waiting.release()
            if waited.stopped is not None:
                return stopped(job_id, waited.stopped)
        if not final.ready():
            return accepted(job_id, answer["message"])
        return finished(job_id, final)

    def too_many_runs(self, task_id: str | None, truncate: bool, target: DatabaseTarget) -> Response | None:
        """429 when this request would start a new run while `VECTOR_API_MAX_RUNS` runs of
        its database are queued or running (a request a live run answers passes)."""
        if task_id is not None and self.broker.exists(claim_key(task_id, truncate, target.identity)):
            return None
        live = run_states(self.settings).live_runs(target.identity)
        if len(live) < self.api.max_runs:
            return None
        return busy(
            429,
            "too many runs",
            f"{len(live)} runs of {target.describe()} are queued or running (VECTOR_API_MAX_RUNS); "
            f"try again when run {live[0]} has ended",
            "TOO_MANY_RUNS",
            live[0],
        )

    def job(self, job_id: str) -> Response:
        record = run_record(job_id, self.settings) if JOB_ID.match(job_id) else None
        if record is None:
            return reply(envelope.not_found_response(f"no job {job_id[:64]!r} (never sent, or expired)"))
        status = run_status(job_id, self.settings)
        return reply(envelope.success_response(job_status(record, run_result(record), status)))

    def cancel_job(self, job_id: str) -> Response:
        unknown = envelope.not_found_response(f"no job {job_id[:64]!r} (never sent, or expired)")
        if not JOB_ID.match(job_id):
            return reply(unknown)
        try:
            status = cancel_run(job_id, self.settings)
        except ConfigurationError:  # cancel_run's word for a run it does not know
            return reply(unknown)
        except RunNotCancellable as exc:
            return reply(envelope.error_response(409, "Conflict", str(exc), "RUN_NOT_CANCELLABLE"))
        data = {"response": f"job {job_id} cancelled", "job_id": job_id, "run": run_view(status)}
        return reply(envelope.success_response(data))


def unreachable(target: DatabaseTarget) -> Response | None:
    """503 for a database that cannot be reached now."""
    try:
        connect(target).close()
    except DatabaseUnavailableError as exc:
        # The reason (refused, timed out, wrong password) stays in this log: an answer
        # that told it would let a caller scan ports and guess passwords.
        log.warning("%s", exc)
        return reply(
            envelope.service_unavailable_response(f"the database {target.describe()} cannot be reached now")
        )
    return None


def stopped(job_id: str, status) -> Response:
    """A run cancelled or abandoned (its workers died) while the request waited."""
    error = stopped_error(status)
    body = envelope.internal_error_response(
        error["reason"], error["error_type"], can_retry=True, job_id=job_id
    )
    return reply(body)


def accepted(job_id: str, message: str) -> Response:
    status_url = url_for("job", job_id=job_id)
    data = {"response": message, "job_id": job_id, "status_url": status_url}
    return reply(envelope.success_response(data, "accepted", code=202), {"Location": status_url})


def finished(job_id: str, final: AsyncResult) -> Response:
    if final.successful():
        return reply(envelope.success_response(run_data(final.result, job_id)))
    error_type, reason, result = failure(final.result)
    extra = {"job_id": job_id, **({"result": run_data(result, job_id)} if result else {})}
    return reply(envelope.internal_error_response(reason, error_type, can_retry=True, **extra))
