"""What celery beat runs: the nightly backup and the retention cleanup of `<root>/vector_bak/`."""

from __future__ import annotations

import logging
import time

from common import alerts, run_keys
from common.config import TASK_ID_PATTERN, load_schedules, load_settings
from common.drill import record as record_drill
from common.drill import run_drill, scratch_target
from common.exceptions import VectorBackupError
from common.redis_conn import redis_client
from common.retention import RetentionPolicy, abort_stale_uploads, apply_retention
from tasks import names
from tasks.app import app
from tasks.client.enqueue import EnqueueResult, enqueue_vector_management, stamp_key

log = logging.getLogger(__name__)


@app.task(name=names.NIGHTLY_BACKUP)
def nightly_backup() -> EnqueueResult:
    """A backup-only run into `<root>/vector_bak/`, through the same run lock as any run."""
    answer = enqueue_vector_management(None, backup=True)
    # What `tasks.client.checks.missed_nightly_backup` reads: a run was sent (or joined) now.
    redis_client(load_settings().runs.redis_url).set(run_keys.NIGHTLY_SENT, repr(time.time()))
    return answer


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
    aborted = _abort_stale_uploads_of_tasks(settings, schedules.pending_upload_max_age_s)
    return {"directory": directory, "removed": removed, "aborted_uploads": aborted}


def _abort_stale_uploads_of_tasks(settings, max_age_s: float | None) -> int:
    """Dead uploads in every task's backup directory: a run whose storage was down when
    it failed could abort none of its own, and retention keeps only `<root>/vector_bak/`."""
    if max_age_s is None:
        return 0
    aborted = 0
    for task_id in settings.root_storage().directories():
        if not (TASK_ID_PATTERN.fullmatch(task_id) and len(task_id) <= 128):
            continue
        try:
            aborted += len(abort_stale_uploads(settings.backup_storage(task_id), max_age_s))
        except VectorBackupError as exc:  # one task's directory must not stop the others'
            log.warning("retention could not clear the uploads of task %s: %s", task_id, exc)
    return aborted


@app.task(name=names.RESTORE_DRILL, bind=True)
def restore_drill(self) -> dict:
    """Restore the newest nightly set into `VECTOR_DRILL_DB_URL` and check it (`common.drill`);
    a failed drill alerts once, under this task's id."""
    settings, schedules = load_settings(), load_schedules()
    if schedules.drill_db_url is None:
        return {"state": "off"}
    target = scratch_target(settings, schedules.drill_db_url)
    result = run_drill(settings, target)
    client = redis_client(settings.runs.redis_url)
    record_drill(client, result)
    if result.state != "passed":
        drill_id = self.request.id or f"drill_{result.at:.0f}"
        where = {} if result.set is None else {"backup_directory": result.set.rsplit("/", 1)[0]}
        alerts.alert(
            settings,
            client,
            alerts.DRILL_FAILED,
            drill_id,
            drill_id=drill_id,
            error=result.detail,
            database=target.identity,
            **where,
        )
    log.log(
        logging.INFO if result.state == "passed" else logging.ERROR,
        "restore drill %s: %s",
        result.state,
        result.detail,
    )
    return result.as_dict()
