"""The OpenAPI 3 description served at `/api/v0/openapi.json`; the schemathesis test holds
every response to it."""

from __future__ import annotations

from typing import Any

from worker.api_params import URL_FORM

PREFIX = "/api/v0/data_pipeline/vector"
TASK_ID = {"type": "string", "pattern": "^[a-zA-Z0-9_]+$", "minLength": 1, "maxLength": 128}


def _envelope(data: dict[str, Any], success: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "success", "message", "data"],
        "properties": {
            "code": {"type": "integer"},
            "success": {"type": "boolean", "enum": [success]},
            "message": {"type": "string"},
            "data": data,
        },
    }


ERROR_DATA = {
    "type": "object",
    "required": ["response", "error_type", "timestamp"],
    "properties": {
        "response": {"type": "string"},
        "error_type": {"type": "string"},
        "can_retry": {"type": "boolean"},
        "job_id": {"type": "string"},
        "timestamp": {"type": "string"},
    },
}
RUN_DATA = {
    "type": "object",
    "required": [
        "response",
        "backup_performed",
        "truncate_performed",
        "tables_backed_up",
        "errors",
        "timestamp",
    ],
    "properties": {
        "response": {"type": "string"},
        "job_id": {"type": ["string", "null"]},
        "status_url": {"type": "string"},
        "backup_performed": {"type": "boolean"},
        "truncate_performed": {"type": "boolean"},
        "backup_directory": {"type": ["string", "null"]},
        "manifest": {"type": ["string", "null"]},
        "tables_backed_up": {"type": "object"},
        "truncate_results": {"type": "object"},
        "errors": {"type": "array", "items": {"type": "string"}},
        "duration": {"type": "number"},
        "timestamp": {"type": "string"},
    },
}
ACCEPTED_DATA = {
    "type": "object",
    "required": ["response", "job_id", "status_url", "timestamp"],
    "properties": {
        "response": {"type": "string"},
        "job_id": {"type": "string"},
        "status_url": {"type": "string"},
    },
}
RESTORE_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["set"],
    "properties": {
        "set": {
            "type": "string",
            "minLength": 1,
            "description": "the set's name as the backups list shows it",
        },
        "collections": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "^[^\\u0000]*$"},
            "minItems": 1,
            "maxItems": 100,
            "description": "replace only these LangChain collections, in place",
        },
        "whole_set": {"type": "boolean", "description": "true: replace every table of the set"},
    },
    # Say which: the collections, or the whole set; never neither, never both.
    "oneOf": [
        {"required": ["collections"], "properties": {"whole_set": {"enum": [False]}}},
        {
            "required": ["whole_set"],
            "properties": {"whole_set": {"enum": [True]}},
            "not": {"required": ["collections"]},
        },
    ],
}
RESTORE_JOB = {
    "type": "object",
    "required": ["response", "job_id", "set", "collections", "state", "timestamp"],
    "properties": {
        "response": {"type": "string"},
        "job_id": {"type": "string"},
        "set": {"type": "string"},
        "collections": {"type": ["array", "null"], "items": {"type": "string"}},
        "requested_at": {"type": "number"},
        "state": {"type": "string", "description": "PENDING (queued), STARTED, SUCCESS or FAILURE"},
        "result": {"type": "object"},
        "error": {"type": "object"},
    },
}
GENERIC_DATA = {"type": "object", "required": ["response", "timestamp"]}
NULLABLE_TEXT = {"type": ["string", "null"]}
PIN = {
    "type": ["object", "null"],
    "description": "null when not pinned; `problem` says why a present pin file could not be read "
    "(the set is pinned all the same)",
    "required": ["pinned_at", "reason", "problem"],
    "properties": {"pinned_at": NULLABLE_TEXT, "reason": NULLABLE_TEXT, "problem": NULLABLE_TEXT},
}
PINNED = {"type": "boolean", "description": "retention never removes a pinned set (python -m worker pin)"}
SET_SUMMARY = {
    "type": "object",
    "required": ["set", "task_id", "timestamp", "tables", "files", "pinned", "pin"],
    "properties": {
        "set": {"type": "string"},
        "task_id": NULLABLE_TEXT,
        "timestamp": {"type": "string"},
        "created_at": NULLABLE_TEXT,
        "run_id": NULLABLE_TEXT,
        "tables": {"type": "object"},
        "files": {"type": "array", "items": {"type": "string"}},
        "pinned": PINNED,
        "pin": PIN,
    },
}
SETS_DATA = {
    "type": "object",
    "required": ["response", "sets", "timestamp"],
    "properties": {"response": {"type": "string"}, "sets": {"type": "array", "items": SET_SUMMARY}},
}
SET_DATA = {
    "type": "object",
    "required": ["response", "set", "pinned", "pin", "manifest", "timestamp"],
    "properties": {
        "response": {"type": "string"},
        "set": {"type": "string"},
        "pinned": PINNED,
        "pin": PIN,
        "manifest": {"type": "object"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid parameters",
        401: "missing or wrong bearer token (when API_TOKEN is set)",
        403: "db_connection host not allowed",
        404: "not found",
        409: "cancel: the run has already ended (or is truncating); restore: a run of the database is live",
        413: "body too large",
        415: "a body that is not sent as application/json",
        429: "too many runs of that database are queued or running (VECTOR_API_MAX_RUNS); can_retry is true",
        500: "the run failed",
        503: "broker or database unreachable; can_retry is true",
    }
    return {str(c): _json(_envelope(ERROR_DATA, False), text[c]) for c in codes}


def _get(
    summary: str, params: list[str], found: str | None, *errors: int, data: dict[str, Any] = GENERIC_DATA
) -> dict[str, Any]:
    """A GET operation with string path parameters; `found` None means a file download."""
    ok = (
        {"description": "the file", "content": {"application/octet-stream": {}}}
        if found is None
        else _json(_envelope(data, True), found)
    )
    parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in params]
    return {
        "get": {"summary": summary, "parameters": parameters, "responses": {"200": ok, **_errors(*errors)}}
    }


def openapi_spec() -> dict[str, Any]:
    backup_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "task_id": TASK_ID,
            "db_connection": {
                "type": "string",
                "pattern": "^postgres(ql)?://[a-z0-9_]+:[a-z0-9_]+@[a-z0-9.]+(:[0-9]{1,4})?/[a-z0-9_]+$",
                "description": f"{URL_FORM} (at most sslmode and connect_timeout beside); "
                "its host must be on VECTOR_API_DB_HOSTS",
            },
            "truncate_vector_tables": {"type": "boolean", "default": False},
            "backup_vector_tables": {"type": "boolean", "default": True},
            "wait": {"type": "boolean", "default": True},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "pgvector-backup", "version": "0.1.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            f"{PREFIX}/backup": {
                "post": {
                    "summary": "Back up (and optionally empty) the vector tables through the Celery chain",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": backup_body}},
                    },
                    "responses": {
                        "200": _json(_envelope(RUN_DATA, True), "the run finished (or nothing was asked)"),
                        "202": _json(_envelope(ACCEPTED_DATA, True), "still running; poll status_url"),
                        **_errors(400, 401, 403, 404, 413, 415, 429, 500, 503),
                    },
                }
            },
            f"{PREFIX}/backup/{{job_id}}": {
                **_get(
                    "A job's state (`run.state`: queued, running, succeeded, failed, cancelled, abandoned), "
                    "per-table progress, and result or error",
                    ["job_id"],
                    "the job",
                    401,
                    404,
                    503,
                ),
                "delete": {
                    "summary": "Cancel a queued or running job: its COPYs stop, its unfinished files are "
                    "removed, its database lock is freed, and it never truncates",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json(_envelope(GENERIC_DATA, True), "the job is cancelled"),
                        **_errors(401, 404, 409, 503),
                    },
                },
            },
            f"{PREFIX}/restore": {
                "post": {
                    "summary": "Restore a set into the workers' database: only some collections, or the "
                    "whole set (say which)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": RESTORE_BODY}},
                    },
                    "responses": {
                        "202": _json(_envelope(ACCEPTED_DATA, True), "sent to the workers; poll status_url"),
                        **_errors(400, 401, 404, 409, 413, 415, 503),
                    },
                }
            },
            f"{PREFIX}/restore/{{job_id}}": _get(
                "A restore job: what was asked, its state, its result or error",
                ["job_id"],
                "the restore job",
                401,
                404,
                503,
                data=RESTORE_JOB,
            ),
            f"{PREFIX}/backups": _get(
                "Backup sets under the task root, newest first, each with whether it is pinned",
                [],
                "the sets",
                401,
                data=SETS_DATA,
            ),
            f"{PREFIX}/backups/{{set_name}}": _get(
                "One set's manifest and whether it is pinned",
                ["set_name"],
                "the manifest",
                401,
                404,
                data=SET_DATA,
            ),
            f"{PREFIX}/backups/{{set_name}}/files/{{file_name}}": _get(
                "Download one file of a set (streamed)", ["set_name", "file_name"], None, 401, 404
            ),
            f"{PREFIX}/drill": _get(
                "The last restore drill's result (null before the first)", [], "the drill", 401
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: newest sets, runs and truncates by state, check, drill",
                    "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {}}}},
                }
            },
            "/api/v0/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}
            },
        },
    }
