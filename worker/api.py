"""The HTTP API: the seeds' backup endpoint and the extensions they list, on Flask.

Routes parse, check, call one function and wrap the answer in the envelope of
`worker/envelope.py`. A run goes through the pipeline's enqueue-once path and run lock
and executes on the workers, never in the web process.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
import time

import redis
from flask import Flask, Response, jsonify, request, send_file, url_for
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from common.catalog import find_set, list_sets, set_file
from common.config import ApiSettings, Settings, load_api_settings, load_settings
from common.db import connect
from common.exceptions import ConfigurationError, DatabaseUnavailableError, RunNotCancellable, VerifyError
from common.redis_conn import redis_client, run_states
from tasks.client.enqueue import claim_key, enqueue_vector_management
from tasks.client.polling import wait_for_end
from tasks.client.runs import cancel_run, run_record, run_result, run_status
from worker import envelope
from worker.api_params import ForbiddenDatabase, InvalidParams, check_db_connection, parse_backup_body
from worker.api_views import failure, job_status, run_data, run_view, stopped_error
from worker.openapi import PREFIX, openapi_spec

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError)
log = logging.getLogger("worker.api")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reply(body: dict, headers: dict | None = None) -> Response:
    response = jsonify(body)
    response.status_code = body["code"]
    response.headers.update(headers or {})
    return response


def create_app(
    settings: Settings | None = None, api: ApiSettings | None = None, any_host: bool = False
) -> Flask:
    settings = settings or load_settings()
    api = api or load_api_settings()
    web = Flask(__name__)
    waiting = threading.BoundedSemaphore(api.max_waiting) if api.max_waiting else threading.Semaphore(0)
    broker = redis_client(settings.runs.redis_url)
    web.config["MAX_CONTENT_LENGTH"] = api.max_body_bytes
    web.json.sort_keys = False
    web.json.ensure_ascii = False

    @web.before_request
    def loopback_names_only():
        # Without a token, a page whose name was rebound to 127.0.0.1 must not be served.
        if api.token is None and not any_host and request.host.rsplit(":", 1)[0] not in LOOPBACK_NAMES:
            return reply(envelope.forbidden_response("without API_TOKEN, the API answers only to localhost"))
        return None

    @web.before_request
    def require_token():
        if api.token is None or request.path == "/api/v0/openapi.json":
            return None
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api.token}".encode()):
            return reply(envelope.unauthorized_response(), {"WWW-Authenticate": "Bearer"})
        return None

    # Without a token anyone local may ask: answers name paths relative to the task root.
    absolute_roots = sorted(
        {str(p) for p in (settings.task_root, settings.task_root.resolve()) if p.is_absolute()},
        key=len,
        reverse=True,
    )

    @web.after_request
    def hide_absolute_paths(response: Response) -> Response:
        if api.token is None and response.mimetype == "application/json" and not response.direct_passthrough:
            text = response.get_data(as_text=True)
            for root in absolute_roots:
                escaped = json.dumps(root)[1:-1]
                text = text.replace(escaped + "/", "").replace(f'"{escaped}"', '"."')
            response.set_data(text)
        return response

    @web.before_request
    def start_clock():
        request.environ["vector.started"] = time.monotonic()

    @web.after_request
    def access_log(response: Response) -> Response:
        took = time.monotonic() - request.environ.get("vector.started", time.monotonic())
        # Control characters (a `%0a` in the path) are escaped by the log's filter.
        log.info(
            "%s %s -> %s in %.0f ms", request.method, request.path[:200], response.status_code, took * 1000
        )
        return response

    @web.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 404:
            return reply(
                envelope.not_found_response(f"no such endpoint: {request.method} {request.path[:200]}")
            )
        if exc.code == 413:
            body = envelope.bad_request_response(f"the body is larger than {api.max_body_bytes} bytes")
            return reply({**body, "code": 413})
        body = envelope.error_response(
            exc.code or 500, exc.name, exc.description or exc.name, "INVALID_REQUEST"
        )
        return reply(body)

    @web.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, BROKER_ERRORS):
            return reply(
                envelope.service_unavailable_response("the broker (Redis) is unreachable; try again")
            )
        log.exception("unexpected error in %s %s", request.method, request.path)
        return reply(envelope.internal_error_response("unexpected server error", "INTERNAL_ERROR"))

    @web.post(f"{PREFIX}/backup")
    def backup():
        body = request.get_data(cache=False)
        if body.strip() and request.mimetype != "application/json":
            # A browser sends text/plain cross-site without asking first: never a JSON body here.
            response = envelope.error_response(
                415,
                "unsupported media type",
                "the body must be sent as application/json",
                "UNSUPPORTED_MEDIA",
            )
            return reply(response)
        try:
            params = parse_backup_body(body)
            target, run_url = settings.database, None
            if params.db_connection:
                target, run_url = check_db_connection(params.db_connection, api)
        except InvalidParams as exc:
            return reply(envelope.bad_request_response(str(exc)))
        except ForbiddenDatabase as exc:
            return reply(envelope.forbidden_response(str(exc)))
        if params.task_id and not (settings.task_root / params.task_id).is_dir():
            return reply(envelope.not_found_response(f"task directory not found: {params.task_id}"))
        if not params.backup:
            return reply(envelope.success_response(run_data(None, None)))
        try:
            connect(target).close()
        except DatabaseUnavailableError as exc:
            # The reason (refused, timed out, wrong password) stays in this log: an answer
            # that told it would let a caller scan ports and guess passwords.
            log.warning("%s", exc)
            return reply(
                envelope.service_unavailable_response(
                    f"the database {target.describe()} cannot be reached now"
                )
            )
        crowded = too_many_runs(params.task_id, params.truncate, target)
        if crowded is not None:
            return crowded
        answer = enqueue_vector_management(
            params.task_id,
            backup=True,
            truncate=params.truncate,
            db_connection=run_url,
            settings=settings,
        )
        job_id = answer["run_id"]
        final = run_result(run_record(job_id, settings))
        # A waiting request holds a server thread: past the limit, the answer is 202 at once.
        if params.wait and waiting.acquire(blocking=False):
            try:
                waited = wait_for_end(job_id, final, api.wait_s, settings, every=0.2)
            finally:
                waiting.release()
            if waited.stopped is not None:
                return stopped(job_id, waited.stopped)
        if not final.ready():
            return accepted(job_id, answer["message"])
        return finished(job_id, final)

    def too_many_runs(task_id: str | None, truncate: bool, target) -> Response | None:
        """429 when this request would start a new run while `VECTOR_API_MAX_RUNS` runs of
        its database are queued or running (a request a live run answers passes)."""
        if task_id is not None and broker.exists(claim_key(task_id, truncate, target.identity)):
            return None
        live = run_states(settings).live_runs(target.identity)
        if len(live) < api.max_runs:
            return None
        body = envelope.error_response(
            429,
            "too many runs",
            f"{len(live)} runs of {target.describe()} are queued or running (VECTOR_API_MAX_RUNS); "
            f"try again when run {live[0]} has ended",
            "TOO_MANY_RUNS",
            job_id=live[0],
            can_retry=True,
        )
        return reply(body, {"Retry-After": "30"})

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

    def finished(job_id: str, final) -> Response:
        if final.successful():
            return reply(envelope.success_response(run_data(final.result, job_id)))
        error_type, reason, result = failure(final.result)
        extra = {"job_id": job_id, **({"result": run_data(result, job_id)} if result else {})}
        return reply(envelope.internal_error_response(reason, error_type, can_retry=True, **extra))

    @web.get(f"{PREFIX}/backup/<job_id>")
    def job(job_id: str):
        record = run_record(job_id, settings) if JOB_ID.match(job_id) else None
        if record is None:
            return reply(envelope.not_found_response(f"no job {job_id[:64]!r} (never sent, or expired)"))
        status = run_status(job_id, settings)
        return reply(envelope.success_response(job_status(record, run_result(record), status)))

    @web.delete(f"{PREFIX}/backup/<job_id>")
    def cancel_job(job_id: str):
        unknown = envelope.not_found_response(f"no job {job_id[:64]!r} (never sent, or expired)")
        if not JOB_ID.match(job_id):
            return reply(unknown)
        try:
            status = cancel_run(job_id, settings)
        except ConfigurationError:  # cancel_run's word for a run it does not know
            return reply(unknown)
        except RunNotCancellable as exc:
            return reply(envelope.error_response(409, "Conflict", str(exc), "RUN_NOT_CANCELLABLE"))
        data = {"response": f"job {job_id} cancelled", "job_id": job_id, "run": run_view(status)}
        return reply(envelope.success_response(data))

    @web.get(f"{PREFIX}/backups")
    def backups():
        sets = list_sets(settings)
        return reply(envelope.success_response({"response": f"{len(sets)} backup set(s)", "sets": sets}))

    @web.get(f"{PREFIX}/backups/<set_name>")
    def backup_set(set_name: str):
        try:
            path, manifest = find_set(settings, set_name)
        except VerifyError as exc:
            return reply(envelope.not_found_response(str(exc)[:300]))
        return reply(
            envelope.success_response({"response": path.name, "set": set_name, "manifest": manifest})
        )

    @web.get(f"{PREFIX}/backups/<set_name>/files/<file_name>")
    def download(set_name: str, file_name: str):
        try:
            path = set_file(settings, set_name, file_name)
        except VerifyError as exc:
            return reply(envelope.not_found_response(str(exc)[:300]))
        return send_file(path, as_attachment=True, download_name=path.name, conditional=True)

    @web.get("/api/v0/openapi.json")
    def openapi():
        return jsonify(openapi_spec())

    return web


def serve(host: str, port: int, threads: int = 8, insecure_no_auth: bool = False) -> None:
    """Serve with waitress, a production WSGI server (the same in compose). Without
    `API_TOKEN` only on a loopback address, unless `insecure_no_auth` says otherwise."""
    from waitress import serve as waitress_serve

    from worker.logs import configure_api_logging

    configure_api_logging()
    try:
        api = load_api_settings()
        if api.token is None and not is_loopback(host) and not insecure_no_auth:
            raise ConfigurationError(
                f"refusing to serve the API on {host} without API_TOKEN: anyone who reaches it could "
                "empty the store; set API_TOKEN, listen on 127.0.0.1, or pass --insecure-no-auth"
            )
        web = create_app(api=api, any_host=insecure_no_auth)
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    waitress_serve(web, host=host, port=port, threads=threads, ident="pgvector-backup")
