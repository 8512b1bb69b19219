"""Celery settings for the worker, beat, Flower and every client. Values come from the
environment (see README, "Configuration")."""

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
# the longest backup, or a long backup would run twice.
_visibility_timeout = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 12 * 3600))
broker_transport_options = {"visibility_timeout": _visibility_timeout}
result_backend_transport_options = {"visibility_timeout": _visibility_timeout}

result_expires = int(os.environ.get("CELERY_RESULT_EXPIRES", 7 * 24 * 3600))
result_extended = True
broker_connection_retry_on_startup = True

timezone = os.environ.get("CELERY_TIMEZONE", "UTC")
include = ["tasks.vector_backup", "tasks.backup_sets"]
