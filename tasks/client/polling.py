"""The one loop that waits for a run: `wait_for_run` (the pipeline), the CLI's live
follow and the API's bounded wait all poll through `wait_for_end`, each with its own
timeout and display."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from celery.result import AsyncResult

from common import output
from common.config import Settings, load_settings
from common.exceptions import ConfigurationError, RunEndedError
from common.run_result import VectorRunResult
from common.run_state import STOPPED, RunStatus
from tasks.client.runs import run_record, run_result, run_status

POLL_EVERY_S = 0.25


@dataclass(frozen=True)
class Waited:
    """How a wait ended: the last task reported (`ready`), the run was recorded cancelled
    or abandoned (`stopped`, its status), or neither: the time ran out."""

    ready: bool
    stopped: RunStatus | None = None


def wait_for_end(
    run_id: str,
    final: AsyncResult,
    timeout: float,
    settings: Settings,
    every: float = POLL_EVERY_S,
    on_tick: Callable[[], None] | None = None,
) -> Waited:
    """Poll until `final` (the run's last task) is ready, the run is known stopped, or
    `timeout` seconds pass; `on_tick` runs between polls (a display's refresh).

    The recorded state is read on every poll because a run whose workers died never
    gets a result: its state says abandoned within the liveness window."""
    deadline = time.monotonic() + timeout
    while not final.ready():
        status = run_status(run_id, settings)
        if status is not None and status["state"] in STOPPED:
            return Waited(ready=False, stopped=status)
        if time.monotonic() > deadline:
            return Waited(ready=False)
        if on_tick is not None:
            on_tick()
        time.sleep(every)
    return Waited(ready=True)


def wait_for_run(run_id: str, timeout: float = 3600, settings: Settings | None = None) -> VectorRunResult:
    """The run's result dict once it succeeded. Raises the run's error if it failed,
    `RunEndedError` as soon as it is known cancelled or abandoned (within the liveness
    window of its workers' death), `TimeoutError` after `timeout` seconds."""
    settings = settings or load_settings()
    record = run_record(run_id, settings)
    if record is None:
        raise ConfigurationError(f"unknown run {run_id} (never sent, or expired)")
    final = run_result(record)
    waited = wait_for_end(run_id, final, timeout, settings)
    if waited.stopped is not None:
        raise RunEndedError(output.stopped_message(waited.stopped))
    if not waited.ready:
        raise TimeoutError(f"run {run_id} still running after {timeout:g}s")
    return final.get(propagate=True)
