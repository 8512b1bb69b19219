"""What celery beat runs: the nightly backup and the retention cleanup of `<root>/vector_bak/`."""

from __future__ import annotations

from common.config import load_schedules, load_settings
from common.redis_conn import redis_client
from common.retention import RetentionPolicy, apply_retention
from tasks import names
from tasks.app import app
from tasks.client.enqueue import EnqueueResult, enqueue_vector_management, stamp_key


@app.task(name=names.NIGHTLY_BACKUP)
def nightly_backup() -> EnqueueResult:
    """A backup-only run into `<root>/vector_bak/`, through the same run lock as any run."""
    return enqueue_vector_management(None, backup=True)


@app.task(name=names.APPLY_RETENTION)
def apply_backup_retention() -> dict:
    settings, schedules = load_settings(), load_schedules()
    directory = settings.backup_location()
    client = redis_client(settings.runs.redis_url)
    removed = apply_retention(
        directory,
        RetentionPolicy(
            keep=schedules.keep,
            max_age_days=schedules.max_age_days,
            pending_upload_max_age_s=schedules.pending_upload_max_age_s,
        ),
        in_use=lambda stamp: bool(client.exists(stamp_key(directory, stamp))),
        temp_suffix=settings.vector.backup_temp_suffix,
        signing_key=settings.signing_key,
    )
    return {"directory": directory, "removed": removed}
