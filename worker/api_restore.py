"""The API's restore routes: `POST /restore` sends a restore of one set (whole, or only some
LangChain collections, in place) to the workers, `GET /restore/<job_id>` reads it.

A restore replaces live rows, so the body must say which: `collections`, or
`"whole_set": true`; nothing is guessed. The workers restore into their own configured
database: no connection string is taken here.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, request, url_for

from common.catalog import find_set
from common.config import Settings
from common.exceptions import VerifyError
from common.redis_conn import run_states
from tasks.client.restores import enqueue_restore, restore_job
from worker import envelope
from worker.api_http import busy, not_json, reply, unsupported_media
from worker.api_params import InvalidParams
from worker.api_runs import JOB_ID, unreachable
from worker.openapi import PREFIX

MAX_COLLECTIONS = 100
MAX_NAME = 1000


def parse_restore_body(raw: bytes) -> tuple[str, list[str] | None]:
    """(set name, collection names or None for the whole set) from the JSON body."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidParams("the body must be a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise InvalidParams('the body must be a JSON object: {"set": ..., "collections": [...]}')
    unknown = sorted(k for k in body if k not in ("set", "collections", "whole_set"))
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidParams(f"unknown field(s): {shown}; known: set, collections, whole_set")
    name, collections, whole = body.get("set"), body.get("collections"), body.get("whole_set")
    if not isinstance(name, str) or not name:
        raise InvalidParams("set must be a set's name as the backups list shows it: <task_id>~<timestamp>")
    if "whole_set" in body and type(whole) is not bool:
        raise InvalidParams("whole_set must be true or false")
    if "collections" in body and not _names(collections):
        raise InvalidParams(
            f"collections must be a list of 1 to {MAX_COLLECTIONS} non-empty names "
            f"(each at most {MAX_NAME} characters of text, no NUL)"
        )
    if (collections is None) == (whole is not True):
        raise InvalidParams(
            "say what to replace: collections (those LangChain collections only) or whole_set: true "
            "(every table of the set), not both"
        )
    return name, collections


def _names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_COLLECTIONS
        and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME and _text(n) for n in value)
    )


def _text(name: str) -> bool:
    """Text PostgreSQL can store and a reply can carry: no NUL, no lone surrogate (JSON
    lets a client send `"\\ud800"`, which no UTF-8 answer could repeat)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in name


class RestoreRoutes:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def register(self, web: Flask) -> None:
        web.add_url_rule(f"{PREFIX}/restore", "restore", self.restore, methods=["POST"])
        web.add_url_rule(f"{PREFIX}/restore/<job_id>", "restore_job", self.job, methods=["GET"])

    def restore(self) -> Response:
        body = request.get_data(cache=False)
        if not_json(body):
            return reply(unsupported_media())
        try:
            name, collections = parse_restore_body(body)
        except InvalidParams as exc:
            return reply(envelope.bad_request_response(str(exc)))
        try:
            find_set(self.settings, name)
        except VerifyError as exc:
            return reply(envelope.not_found_response(str(exc)[:300]))
        refused = unreachable(self.settings.database) or self.run_in_progress()
        if refused is not None:
            return refused
        job_id = enqueue_restore(self.settings, name, collections)
        what = "the whole set" if collections is None else f"collection(s) {', '.join(collections)[:300]}"
        status_url = url_for("restore_job", job_id=job_id)
        data = {"response": f"restore of {what} from {name} sent", "job_id": job_id, "status_url": status_url}
        return reply(envelope.success_response(data, "accepted", code=202), {"Location": status_url})

    def run_in_progress(self) -> Response | None:
        """409 while a backup or truncate run of the database is queued or running: a
        restore would swap or replace tables under its COPY or its TRUNCATE."""
        target = self.settings.database
        live = run_states(self.settings).live_runs(target.identity)
        if not live:
            return None
        return busy(
            409,
            "Conflict",
            f"run {live[0]} of {target.describe()} is queued or running; restore when it has ended "
            f"(or cancel it: DELETE {PREFIX}/backup/{live[0]})",
            "RUN_IN_PROGRESS",
            live[0],
        )

    def job(self, job_id: str) -> Response:
        job = restore_job(self.settings, job_id) if JOB_ID.match(job_id) else None
        if job is None:
            unknown = f"no restore job {job_id[:64]!r} (never sent, or expired)"
            return reply(envelope.not_found_response(unknown))
        return reply(envelope.success_response({"response": f"restore {job['state']}", **job}))
