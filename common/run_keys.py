"""Every Redis key a run uses, named in one place (as Barman's `lockfile.py` names every
lock). None holds a secret except `run_database`: a request's `db_connection` URL, kept
only while its run lasts. docs/architecture.md lists them for operators."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RUNS_INDEX = "vector:runs"  # recent runs, scored by request time
LAST_CHECK = "vector:check:last"  # the last `check`'s exit code and time, for /metrics
LAST_DRILL = "vector:drill:last"  # the last restore drill's result (state, set, duration, time)
RUN_LOCKS = "vector:run-lock:*"  # every database's run lock (`run_lock`), for `check`
CLAIMS = "vector:claim:*"  # every enqueue-once claim (`claim`), for `check`


def restore_job(job_id: str) -> str:
    """What a restore sent through the API asked for: the set and collections (no secret)."""
    return f"vector:restore-job:{job_id}"


def claim(task_id: str, mode: str, database: Mapping[str, Any]) -> str:
    """Enqueue once: the run answering a pipeline task's `mode` (backup|truncate) on a database."""
    return "vector:claim:{task_id}:{mode}:{host}:{port}/{dbname}".format(
        task_id=task_id, mode=mode, **database
    )


def run_record(run_id: str) -> str:
    """What was sent for a run: task id, truncate flag, timestamp, the chain's task ids."""
    return f"vector:run:{run_id}"


def run_state(run_id: str) -> str:
    return f"vector:run-state:{run_id}"


def run_tasks(run_id: str) -> str:
    """Which tasks of the run are running or done."""
    return f"vector:run-tasks:{run_id}"


def run_beat_prefix(run_id: str) -> str:
    """Followed by a task id: that task's heartbeat, expiring after the liveness window."""
    return f"vector:run-beat:{run_id}:"


def run_lock(database: Mapping[str, Any]) -> str:
    """One run per database; its value is the run id holding it."""
    return "vector:run-lock:{host}:{port}/{dbname}".format(**database)


def run_database(run_id: str) -> str:
    return f"vector:run-db:{run_id}"


def stamp(directory: object, timestamp: str) -> str:
    """A set's timestamp in a backup directory, reserved so two runs never share one."""
    return f"vector:stamp:{directory}:{timestamp}"


def split(run_id: str, table: str) -> str:
    """Prefix of a range-split table's coordination keys (holder, plan, claims, outcomes)."""
    return f"vector:split:{run_id}:{table}"


def alert(event: str, subject: str) -> str:
    """An alert sent once: `event` (run_failed, …) about `subject` (a run id, a drill, a
    missed schedule time), claimed with SET NX by whoever sends it."""
    return f"vector:alert:{event}:{subject}"


NIGHTLY_SENT = "vector:nightly-sent"  # when beat's nightly backup last sent (or joined) a run
