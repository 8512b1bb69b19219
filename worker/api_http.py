"""The API's HTTP plumbing, around every route: the JSON reply, who may ask (the token,
loopback names), paths hidden without a token, the access log and the error answers."""

from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path

import redis
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from common.config import ApiSettings, Settings
from common.exceptions import StorageError
from worker import envelope

BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
log = logging.getLogger("worker.api")


def reply(body: dict, headers: dict | None = None) -> Response:
    response = jsonify(body)
    response.status_code = body["code"]
    response.headers.update(headers or {})
    return response


def busy(code: int, title: str, text: str, error_type: str, job_id: str) -> Response:
    """A refusal to come back to (429, 409): the run in the way, `can_retry`, `Retry-After`."""
    body = envelope.error_response(code, title, text, error_type, job_id=job_id, can_retry=True)
    return reply(body, {"Retry-After": "30"})


def not_json(body: bytes) -> bool:
    """A body not sent as JSON: a browser sends text/plain cross-site without asking first."""
    return bool(body.strip()) and request.mimetype != "application/json"


def unsupported_media() -> dict:
    return envelope.error_response(
        415, "unsupported media type", "the body must be sent as application/json", "UNSUPPORTED_MEDIA"
    )


def install(web: Flask, settings: Settings, api: ApiSettings, any_host: bool) -> None:
    """Every hook, in the order they must run (Flask runs `after_request` hooks last first)."""
    guard_requests(web, api, any_host)
    hide_absolute_paths(web, settings, api)
    log_requests(web)
    answer_errors(web, api)


def guard_requests(web: Flask, api: ApiSettings, any_host: bool) -> None:
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


def hide_absolute_paths(web: Flask, settings: Settings, api: ApiSettings) -> None:
    """Without a token anyone local may ask: answers name paths relative to the task root
    (or to `VECTOR_STORAGE_URL` when that is a directory). An `s3://` location is no path
    on this host: it is shown whole, as verify and restore take it."""
    roots = [settings.task_root]
    if "://" not in settings.root_location:
        roots.append(Path(settings.root_location))
    absolute_roots = sorted(
        {str(p) for root in roots for p in (root, root.resolve()) if p.is_absolute()},
        key=len,
        reverse=True,
    )

    @web.after_request
    def relative_paths(response: Response) -> Response:
        if api.token is None and response.mimetype == "application/json" and not response.direct_passthrough:
            text = response.get_data(as_text=True)
            for root in absolute_roots:
                escaped = json.dumps(root)[1:-1]
                text = text.replace(escaped + "/", "").replace(f'"{escaped}"', '"."')
            response.set_data(text)
        return response


def log_requests(web: Flask) -> None:
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


def answer_errors(web: Flask, api: ApiSettings) -> None:
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
        if isinstance(exc, StorageError):
            # The message names the location and the reason, never a credential; the
            # answer names neither, as for a database that cannot be reached.
            log.warning("%s %s: %s", request.method, request.path[:200], exc)
            return reply(
                envelope.service_unavailable_response("the backup storage cannot be reached now; try again")
            )
        log.exception("unexpected error in %s %s", request.method, request.path)
        return reply(envelope.internal_error_response("unexpected server error", "INTERNAL_ERROR"))
