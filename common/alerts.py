"""Alerts: a JSON POST to `VECTOR_ALERT_WEBHOOK` when a run fails or is abandoned, a
restore drill fails, or the nightly backup is missed (docs/operations.md#alerts).

Plain functions, no Celery. `alert()` builds the body, claims it once per event and
subject (a Redis SET NX, `run_keys.alert`) and hands it to the process's sender, which
`tasks/app.py` sets to "send the `vector.send_alert` task": delivery, retries and backoff
happen on a worker, never in a run or in the caller that noticed, and a failed delivery
never fails anything else. `post()` is that task's one HTTP request.

A cancelled run never alerts: a person asked for it (or a newer run of its pipeline task
superseded it). A body holds names only: no password, no URL with credentials, no token,
no storage secret, and a shortened error with anything that looks like one masked.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

import redis

from common import run_keys
from common.config import AlertSettings, Settings
from common.exceptions import AlertDeliveryError
from common.run_state import ABANDONED, FAILED, RunStatus

log = logging.getLogger(__name__)

SOURCE = "pgvector-backup"
RUN_FAILED, RUN_ABANDONED = "run_failed", "run_abandoned"
DRILL_FAILED, BACKUP_MISSED = "drill_failed", "backup_missed"
EVENTS = (RUN_FAILED, RUN_ABANDONED, DRILL_FAILED, BACKUP_MISSED)
# The run ends that alert; a cancelled run does not (a person asked), a succeeded one neither.
RUN_EVENTS = {FAILED: RUN_FAILED, ABANDONED: RUN_ABANDONED}
ERROR_CHARS = 500
# Values that must never reach a body, whatever an error message quotes.
SECRET_VARIABLES = (
    "VECTOR_DB_PASSWORD",
    "VECTOR_DB_URL",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "API_TOKEN",
    "VECTOR_SIGNING_KEY",
    "VECTOR_ALERT_WEBHOOK",
    "VECTOR_ALERT_WEBHOOK_TOKEN",
    "MINIO_ROOT_PASSWORD",
    "FLOWER_BASIC_AUTH",
)
_URL_USER = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@]+@")
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|authorization)(\s*[=:]\s*)(\S+)"
)


class AlertBody(TypedDict, total=False):
    event: str
    source: str
    at: str
    run_id: str
    task_id: str | None
    state: str
    error: str
    database: dict[str, Any]
    backup_directory: str
    drill_id: str
    expected_at: str
    last_sent_at: str | None
    schedule: str


Sender = Callable[[AlertBody], None]
_sender: Sender | None = None


def use_sender(send: Sender | None) -> None:
    """How this process sends an alert it claimed (the Celery side sets it at import)."""
    global _sender
    _sender = send


def alert(
    settings: Settings,
    client: redis.Redis,
    event: str,
    subject: str,
    *,
    at: float | None = None,
    ttl_s: int | None = None,
    **fields: Any,
) -> AlertBody | None:
    """Send `event` about `subject` (a run id, a drill id, a missed schedule time) once:
    the body sent, or None if it was sent before, no sender is set, or anything failed.
    Never raises. `fields` are AlertBody's; `error` is shortened and masked."""
    try:
        body = alert_body(settings, event, at=at, **fields)
    except ValueError as exc:  # a body this code got wrong (the message names fields only): say so loudly
        log.error("%s alert for %s not sent: %s", event, subject, exc)
        return None
    try:
        claimed = client.set(
            run_keys.alert(event, subject), body["at"], nx=True, ex=ttl_s or settings.runs.keep_s
        )
        if not claimed:
            return None
        if _sender is None:
            log.warning("%s alert for %s not sent: this process has no alert sender", event, subject)
            return None
        _sender(body)
        return body
    except Exception as exc:  # noqa: BLE001 - an alert must never fail what noticed it
        log.warning("%s alert for %s not sent: %s", event, subject, type(exc).__name__)
        return None


def run_ended(settings: Settings, client: redis.Redis, status: RunStatus) -> AlertBody | None:
    """`RunStates.on_end`: alert when a run failed or was abandoned."""
    event = RUN_EVENTS.get(status.get("state", ""))
    if event is None:
        return None
    task_id = status.get("task_id")
    return alert(
        settings,
        client,
        event,
        status["run_id"],
        at=status.get("finished_at"),
        run_id=status["run_id"],
        task_id=task_id,
        state=status["state"],
        error=status.get("reason", ""),
        database=status.get("database") or settings.database.identity,
        backup_directory=settings.backup_location(task_id),
    )


def alert_body(settings: Settings, event: str, *, at: float | None = None, **fields: Any) -> AlertBody:
    """The JSON body of an alert (docs/operations.md#alerts): names only, never a secret."""
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}")
    unknown = set(fields) - set(AlertBody.__annotations__)
    if unknown:
        raise ValueError(f"not an alert field: {', '.join(sorted(unknown))}")
    body = AlertBody(event=event, source=SOURCE, at=iso_time(time.time() if at is None else at))
    for name, value in fields.items():
        if name == "database":
            value = {k: value[k] for k in ("host", "port", "dbname") if k in value}
        elif name == "error":
            value = redact(settings, str(value))
        elif isinstance(value, str):
            value = redact(settings, value)
        body[name] = value  # type: ignore[literal-required]
    return body


def redact(settings: Settings, text: str) -> str:
    """`text` shortened, with passwords, URL credentials and known secrets masked."""
    text = settings.database.redact(text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _URL_USER.sub(r"\1***@", text)
    text = _SECRET_PAIR.sub(r"\1\2***", text)
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def iso_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is refused: following it would hand the bearer token to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post(config: AlertSettings, body: Mapping[str, Any]) -> int:
    """POST `body` as JSON to the webhook, waiting at most `timeout_s`; its HTTP status.
    Raises `AlertDeliveryError` (transient or not), naming neither the URL nor the token."""
    if config.webhook is None:
        raise AlertDeliveryError("VECTOR_ALERT_WEBHOOK is not set", transient=False)
    request = urllib.request.Request(
        config.webhook,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": SOURCE},
    )
    if config.token:
        request.add_header("Authorization", f"Bearer {config.token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=config.timeout_s) as response:
            response.read(65536)
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise AlertDeliveryError(f"the alert webhook answered {exc.code}", transient) from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, BaseException) else exc
        raise AlertDeliveryError(f"the alert webhook could not be reached: {type(reason).__name__}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise AlertDeliveryError(f"the alert webhook could not be reached: {type(exc).__name__}") from None


def retry_delay(attempt: int, config: AlertSettings, rand: Callable[[], float] = random.random) -> float:
    """Seconds before try `attempt + 2`: exponential from `backoff_s`, capped, with jitter
    (half fixed, half random) so many workers' retries do not arrive together."""
    ceiling = min(config.backoff_max_s, config.backoff_s * 2**attempt)
    return ceiling / 2 + rand() * ceiling / 2
