"""Celery settings for the worker, beat, Flower and every client. Values come from the
environment (see docs/configuration.md)."""

import os

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
result_backend = os.environ.get("CELERY_RESULT_BACKEND", broker_url)

# JSON only: nothing a message carries can execute code on a worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A backup is re-run, not lost, if its worker dies: ack after the task ends, requeue
# when the worker process is lost, and take one task at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True

# Events feed Flower and `celery events`.
worker_send_task_events = True
task_send_sent_event = True

# Redis re-delivers an unacked task after this many seconds, so it must be longer than
# the longest backup, or a long backup would run twice. Celery's Redis docs ask for all
# three settings, with the same value. A run whose worker died is abandoned long before
# (VECTOR_LIVENESS_WINDOW): its redelivered tasks then end at once.
visibility_timeout = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 12 * 3600))
broker_transport_options = {"visibility_timeout": visibility_timeout}
result_backend_transport_options = {"visibility_timeout": visibility_timeout}

# A Redis restart mid-run must not fail the tasks that report progress or store
# results meanwhile: retry those writes with backoff for a few minutes.
result_backend_always_retry = True
result_backend_max_retries = 30

result_expires = int(os.environ.get("CELERY_RESULT_EXPIRES", 7 * 24 * 3600))
result_extended = True
broker_connection_retry_on_startup = True

timezone = os.environ.get("CELERY_TIMEZONE", "UTC")
include = ["tasks.vector_backup", "tasks.backup_sets", "tasks.scheduled", "tasks.alerts"]


def _schedule(value: str):
    """A 5-field cron string, or a number of seconds (tests use seconds)."""
    from celery.schedules import crontab

    try:
        return float(value)
    except ValueError:
        return crontab.from_string(value)


def _beat_schedule() -> dict:
    from common.config import load_schedules

    schedules = load_schedules()
    return {
        "nightly-vector-backup": {
            "task": "vector.nightly_backup",
            "schedule": _schedule(schedules.backup),
            "options": {"expires": 3600},  # a backup missed by an hour is skipped, not piled up
        },
        "vector-backup-retention": {
            "task": "vector.apply_retention",
            "schedule": _schedule(schedules.retention),
            "options": {"expires": 3600},
        },
        **(
            {
                "vector-restore-drill": {
                    "task": "vector.restore_drill",
                    "schedule": _schedule(schedules.drill),
                    "options": {"expires": 3600},
                }
            }
            if schedules.drill_db_url
            else {}
        ),
    }


beat_schedule = _beat_schedule()
