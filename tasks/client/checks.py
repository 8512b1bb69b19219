"""Checks a `check` command (or any monitor) runs from outside: was the nightly backup
sent on schedule? beat cannot notice its own death, so this is asked by someone else.

beat's nightly task records when it sent (or joined) a run (`run_keys.NIGHTLY_SENT`); the
backup is missed when its newest scheduled time older than `VECTOR_BACKUP_GRACE` has no
such record at or after it. What the run then does is the run's own alert (failed,
abandoned).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from common import alerts, run_keys
from common.alerts import AlertBody
from common.config import Schedules, Settings
from common.redis_conn import redis_client
from tasks.app import app

# beat may send a moment before the minute it was due (its clock, the worker's): tolerated.
EARLY_S = 60.0
# How far back a cron schedule is searched for its newest time (a weekly one fits).
LOOK_BACK = timedelta(days=8)


def last_due(schedule: str, before: float) -> float | None:
    """The newest time `schedule` (cron in CELERY_TIMEZONE, or seconds) was due at or
    before `before`, as a Unix time. beat's phase on a seconds schedule is unknown: then a
    whole period before `before`, on a multiple of the period (one alert per period). None
    if a cron schedule had no time within `LOOK_BACK`."""
    try:
        period = float(schedule)
    except ValueError:
        pass
    else:
        return (before // period - 1) * period
    tz = ZoneInfo(str(app.conf.timezone or "UTC"))
    cron = crontab.from_string(schedule)
    limit = datetime.fromtimestamp(before, UTC)
    moment, found = limit - LOOK_BACK, None
    while True:
        last, delta, _ = cron.remaining_delta(moment, tz=tz)
        moment = last + delta
        if moment > limit:
            return found
        found = moment.timestamp()


def missed_nightly_backup(settings: Settings, schedules: Schedules, now: float | None = None) -> float | None:
    """The scheduled time of the nightly backup beat missed (none sent from then until
    `VECTOR_BACKUP_GRACE` later), or None if it was sent. Redis without a record (a fresh
    install, or its data lost) counts as missed: nothing shows a backup was sent."""
    now = time.time() if now is None else now
    due = last_due(schedules.backup, now - schedules.backup_grace_s)
    if due is None:
        return None
    sent = redis_client(settings.runs.redis_url).get(run_keys.NIGHTLY_SENT)
    if sent is not None and float(sent) >= due - EARLY_S:
        return None
    return due


def check_nightly_backup(
    settings: Settings, schedules: Schedules, now: float | None = None
) -> AlertBody | None:
    """Alert `backup_missed` once per missed scheduled time; the body sent, else None."""
    due = missed_nightly_backup(settings, schedules, now)
    if due is None:
        return None
    client = redis_client(settings.runs.redis_url)
    sent = client.get(run_keys.NIGHTLY_SENT)
    expected = alerts.iso_time(due)
    return alerts.alert(
        settings,
        client,
        alerts.BACKUP_MISSED,
        expected,
        expected_at=expected,
        last_sent_at=alerts.iso_time(float(sent)) if sent is not None else None,
        schedule=schedules.backup,
        backup_directory=settings.backup_location(),
    )
