"""Parse and check the backup endpoint's JSON body; every message is safe to return.

Nothing here echoes a value back (a body may hold a password), only field names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.config import ApiSettings, validate_task_id
from common.db import DatabaseTarget
from common.exceptions import ConfigurationError

FIELDS: dict[str, type] = {
    "task_id": str,
    "db_connection": str,
    "truncate_vector_tables": bool,
    "backup_vector_tables": bool,
    "wait": bool,
}


class InvalidParams(ValueError):
    """400: the body is not a valid request."""


class ForbiddenDatabase(ValueError):
    """403: `db_connection` names a host the API may not reach."""


@dataclass(frozen=True)
class BackupParams:
    task_id: str | None = None
    db_connection: str | None = None
    truncate: bool = False
    backup: bool = True
    wait: bool = True


def parse_backup_body(raw: bytes) -> BackupParams:
    """`{}`, an empty body, or an object of the known fields with the right types."""
    if not raw.strip():
        return BackupParams()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidParams("the body must be a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise InvalidParams("the body must be a JSON object")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidParams(f"unknown field(s): {shown}; known: {', '.join(FIELDS)}")
    for name, kind in FIELDS.items():
        value = body.get(name)
        if value is not None and type(value) is not kind:
            expected = "true or false" if kind is bool else "a string"
            raise InvalidParams(f"{name} must be {expected}")
    task_id = body.get("task_id")
    if task_id is not None:
        try:
            validate_task_id(task_id)
        except ConfigurationError as exc:
            raise InvalidParams(f"invalid task_id: {exc}") from None
    truncate = bool(body.get("truncate_vector_tables", False))
    backup = body.get("backup_vector_tables")
    return BackupParams(
        task_id=task_id,
        db_connection=body.get("db_connection") or None,
        truncate=truncate,
        backup=True if backup is None else backup or truncate,  # truncate implies backup
        wait=body.get("wait") is not False,
    )


def check_db_connection(url: str, api: ApiSettings) -> DatabaseTarget:
    """The database `url` names, if it is a PostgreSQL URL whose host is allowed."""
    try:
        target = DatabaseTarget.from_url(url)
    except ConfigurationError as exc:
        raise InvalidParams(f"db_connection: {exc}") from None
    if target.host not in api.allowed_db_hosts:
        raise ForbiddenDatabase(
            f"db_connection: host {target.host[:100]!r} is not allowed; allowed hosts: "
            f"{', '.join(api.allowed_db_hosts) or 'none'} (VECTOR_API_DB_HOSTS)"
        )
    return target
