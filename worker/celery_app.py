"""The app as processes see it: `celery -A worker worker -l info -E` finds it as
`worker.app`. The app itself lives at the bottom (`tasks/app.py`); importing it from here
also connects the log format and redaction to Celery's loggers."""

import worker.logs  # noqa: F401 - connects the log format and redaction to Celery's loggers
from tasks.app import app

__all__ = ["app", "release_pending_results"]


def release_pending_results() -> None:
    """Unsubscribe every result this process is waiting on, while Redis is still reachable.

    Celery's Redis backend subscribes to each task a client sends and unsubscribes when
    the result object is collected; at interpreter exit that fails noisily. Processes
    that send tasks call this before they exit.
    """
    for mapping in getattr(app.backend, "_pending_results", ()):
        for waiters in list(mapping.values()):
            for result in list(waiters.values()):
                app.backend.remove_pending_result(result)
