"""Log format for workers and the API: text (default) or one JSON object per line
(`LOG_FORMAT=json`). Either way, a password inside a URL never reaches the output."""

from __future__ import annotations

import json
import logging
import os
import re

from celery import current_task
from celery.signals import after_setup_logger, after_setup_task_logger

# In a URL such as scheme://user:SECRET@host the SECRET becomes ***.
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    return URL_PASSWORD.sub(r"\1***@", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        task = current_task._get_current_object() if current_task else None
        if task is not None and task.request.id:
            entry.update(task_id=task.request.id, task_name=task.name)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def json_logs() -> bool:
    return os.environ.get("LOG_FORMAT", "text").lower() == "json"


def configure(logger: logging.Logger) -> None:
    """Redact every handler of `logger`; with LOG_FORMAT=json, format it as JSON too."""
    for handler in logger.handlers:
        handler.addFilter(RedactingFilter())
        if json_logs():
            handler.setFormatter(JsonFormatter())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _configure_celery_logger(logger, **_):
    configure(logger)


class EscapingFilter(logging.Filter):
    """Control characters from a request (a `%0a` in a path or a database name) are
    escaped, so no one can forge a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = (
            CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), message),
            None,
        )
        return True


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def configure_api_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    root = logging.getLogger()
    configure(root)
    for handler in root.handlers:
        handler.addFilter(EscapingFilter())
