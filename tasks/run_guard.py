"""Every task of a run goes through `run_task`: it begins only while its run is live,
beats while it works, stops its COPYs when the run is cancelled or abandoned, and ends
by recording what became of the run.

A task of a run that is no longer live (cancelled, abandoned, superseded, or ended)
does nothing: it raises `RunEndedError` at once, after removing the files its run left
unfinished. So a task Redis redelivers hours after its worker died never copies and
never truncates.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery.exceptions import Retry

from common.config import Settings
from common.db import cancel_backends
from common.exceptions import RunEndedError, TruncateRefusedError
from common.output import task_skipped_message
from common.periodic import Periodic
from common.redis_conn import redis_client, run_states
from common.run_database import forget_run_database
from common.run_lock import RunLock
from common.run_state import FAILED, LIVE, RUNNING, STOPPED, SUCCEEDED, RunStates
from common.run_steps import discard_unfinished_set

log = logging.getLogger(__name__)


def run_lock(settings: Settings, run_id: str) -> RunLock:
    """The run's database lock; a working task renews it for the liveness window."""
    client = redis_client(settings.runs.redis_url)
    return RunLock(client, settings.database.identity, run_id, settings.runs.liveness_window_s)


class RunTask:
    """One task at work in a run: its heartbeat, and what stops it."""

    def __init__(self, settings: Settings, run: dict[str, Any], task_id: str) -> None:
        self.settings, self.run, self.task_id = settings, run, task_id
        self.run_id = str(run["run_id"])
        self.states = run_states(settings)
        self.lock = run_lock(settings, self.run_id)
        self.stopped: str | None = None
        self._beat = Periodic(self.beat, settings.runs.beat_every_s, "run-heartbeat")

    def beat(self) -> None:
        try:
            state = self.states.beat(self.run_id, self.task_id)
            if state == RUNNING:
                self.lock.renew()
            elif state in STOPPED:
                self.stopped = state
                # Every beat, in case a new COPY of the run began since the last one.
                cancel_backends(self.settings.database, self.settings.database.application_name)
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread must outlive any error
            # A missed beat only brings the run nearer to being presumed dead: safe.
            log.warning("run %s: heartbeat failed: %s", self.run_id, type(exc).__name__)

    def check(self) -> None:
        """Raise `RunEndedError` if the run was cancelled or abandoned while this task worked."""
        state = self.states.state(self.run_id)
        if state in STOPPED or self.stopped:
            raise ended(self.states, self.run_id, state or self.stopped or "unknown")

    def may_truncate(self) -> None:
        """The point of no return: from here on the run can no longer be cancelled."""
        state = self.states.start_truncating(self.run_id)
        if state != RUNNING:
            raise TruncateRefusedError(f"run {self.run_id} is {state}; nothing was truncated", None)

    def stop(self) -> None:
        self._beat.stop()


def ended(states: RunStates, run_id: str, state: str) -> RunEndedError:
    status = states.status(run_id) or {}
    return RunEndedError(task_skipped_message(run_id, state, status.get("reason")))


@contextlib.contextmanager
def run_task(settings: Settings, run: dict[str, Any], task_id: str, last_step: bool) -> Iterator[RunTask]:
    """Work as `task_id` of `run` (a `RunRequest` or a run result); see the module doc.

    With `last_step`, the run is recorded as succeeded when the block ends normally.
    Any other exception but a retry records it as failed.
    """
    states = run_states(settings)
    run_id = str(run["run_id"])
    state = states.begin_task(run_id, task_id)
    if state == "missing":
        state = _register(settings, states, run, task_id)
    if state != RUNNING:
        leave_stopped_run(settings, run, state)
        raise ended(states, run_id, state)
    task = RunTask(settings, run, task_id)
    try:
        yield task
    except Retry:
        raise
    except RunEndedError:
        raise
    except BaseException as exc:
        states.finish(run_id, FAILED, settings.database.redact(str(exc))[:2000])
        raise
    else:
        if last_step:
            states.finish(run_id, SUCCEEDED)
    finally:
        task.stop()
        state = states.end_task(run_id, task_id)
        if state in STOPPED:
            leave_stopped_run(settings, run, state)
        elif state in LIVE:
            # The next step may wait for a worker: the run keeps its database meanwhile.
            task.lock.renew(settings.runs.lock_ttl_s)


def _register(settings: Settings, states: RunStates, run: dict[str, Any], task_id: str) -> str:
    """A run sent as a bare signature has no record yet: its first task makes one. One
    whose record expired is long over: it is never brought back."""
    requested_at = run.get("requested_at")
    if requested_at is not None and time.time() - requested_at > settings.runs.truncate_deadline_s:
        return "expired"
    truncate = bool(run.get("truncate_requested"))
    states.create(str(run["run_id"]), run.get("task_id"), settings.database.identity, truncate, requested_at)
    return states.begin_task(str(run["run_id"]), task_id)


def leave_stopped_run(settings: Settings, run: dict[str, Any], state: str | None) -> list[str]:
    """For a cancelled or abandoned run: remove what it left unfinished, free its lock and
    forget its database URL; the names of the files removed. Nothing for any other state."""
    if state not in STOPPED or not run.get("timestamp"):
        return []
    run_id = str(run["run_id"])
    try:
        removed = discard_unfinished_set(settings, run.get("task_id"), str(run["timestamp"]))
    except OSError as exc:  # a StorageError too: the lock below is freed whatever the storage says
        log.warning("run %s is %s: what it left could not be removed: %s", run_id, state, exc)
        removed = []
    if removed:
        log.info("run %s is %s: removed %s", run_id, state, ", ".join(removed))
    with contextlib.suppress(redis.RedisError):
        run_lock(settings, run_id).release()
        forget_run_database(redis_client(settings.runs.redis_url), run_id)
    return removed
