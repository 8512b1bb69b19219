"""The API's response envelope, as the seeds define it: `{code, success, message, data}`.

Error data always carries `response` (what went wrong, for a person), `error_type` (for a
program) and an ISO-8601 `timestamp` with offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def envelope(code: int, message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"code": code, "success": 200 <= code < 300, "message": message, "data": data}


def success_response(data: dict[str, Any], message: str = "operation succeeded", code: int = 200) -> dict:
    return envelope(code, message, {**data, "timestamp": data.get("timestamp") or now_iso()})


def error_response(code: int, message: str, response: str, error_type: str, **extra: Any) -> dict[str, Any]:
    return envelope(
        code, message, {"response": response, "error_type": error_type, **extra, "timestamp": now_iso()}
    )


def bad_request_response(response: str, error_type: str = "INVALID_PARAMS") -> dict[str, Any]:
    return error_response(400, "invalid request parameters", response, error_type)


def unauthorized_response(response: str = "a valid bearer token is required") -> dict[str, Any]:
    return error_response(401, "unauthorized", response, "UNAUTHORIZED")


def forbidden_response(response: str) -> dict[str, Any]:
    return error_response(403, "forbidden", response, "FORBIDDEN")


def not_found_response(response: str) -> dict[str, Any]:
    return error_response(404, "resource not found", response, "RESOURCE_NOT_FOUND")


def internal_error_response(
    response: str, error_type: str = "DATABASE_ERROR", can_retry: bool = False, **extra: Any
) -> dict[str, Any]:
    return error_response(500, "internal error", response, error_type, can_retry=can_retry, **extra)


def service_unavailable_response(response: str) -> dict[str, Any]:
    return error_response(503, "service unavailable", response, "SERVICE_UNAVAILABLE", can_retry=True)
