"""The CLI's view of a run: a live progress bar per table while it runs, then the summary
(or, with --json, the stats). `python -m worker run` and `follow` use it, and the demo."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import click
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common import output
from common.config import Settings, load_settings
from common.exceptions import RunFailedError, VectorBackupError
from common.run_state import STOPPED
from common.sizes import format_size
from tasks.client.polling import wait_for_end
from tasks.client.progress import table_states
from tasks.client.runs import run_record, run_result, run_status

console = Console(stderr=True)


def follow_run(
    run_id: str, timeout: float, as_json: bool, may_rejoin: bool = False
) -> tuple[int, str | None]:
    """Follow the run to its end: (exit status, the run's recorded state). With
    `may_rejoin`, an abandoned run is only noted: the caller sends a new one."""
    settings = load_settings()
    record = run_record(run_id, settings)
    if record is None:
        raise click.UsageError(f"unknown run {run_id} (never sent, or expired)")
    final = run_result(record)
    with table_bars(record) as refresh:
        waited = wait_for_end(run_id, final, timeout, settings, on_tick=refresh)
        if waited.ready:
            refresh()
    if waited.stopped is not None:
        # A dead run's last task never reports: its state says so within the window.
        status = waited.stopped
        if may_rejoin and status["state"] == "abandoned":
            console.print(output.stopped_message(status), soft_wrap=True)
        else:
            report(None, output.stopped_message(status), as_json)
        return 1, status["state"]
    if not waited.ready:
        console.print(output.still_running_message(run_id, timeout))
        return 1, None
    return report_end(run_id, final, settings, as_json)


@contextlib.contextmanager
def table_bars(record: dict[str, Any]) -> Iterator[Callable[[], None]]:
    """Live bars, one per table of the run; yields the function that brings them up to date."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bars = {
            name: progress.add_task(name, total=None, note="waiting")
            for name in dict.fromkeys(record["tables"].values())
        }

        def refresh() -> None:
            for table, info in table_states(record).items():
                update_bar(progress, bars[table], info)

        yield refresh


def update_bar(progress: Progress, bar, info: dict) -> None:
    state = info["state"]
    if state == "PROGRESS":
        progress.update(
            bar, total=info.get("total_estimate"), completed=info["rows"], note=format_size(info["bytes"])
        )
    elif state == "SUCCESS" and info.get("success"):
        progress.update(
            bar, total=info["row_count"] or 1, completed=info["row_count"] or 1, note=info["file_size"]
        )
    elif state == "SUCCESS":
        progress.update(bar, note="FAILED")
    elif state == "RETRY":
        progress.update(bar, note="waiting for the database lock")
    else:
        progress.update(bar, note=state.lower())


def report_end(run_id: str, final: AsyncResult, settings: Settings, as_json: bool) -> tuple[int, str | None]:
    """The summary of a run whose last task reported: (exit status, its recorded state)."""
    status = run_status(run_id, settings)
    state = status["state"] if status else None
    try:
        stats = final.get(timeout=5, propagate=True)
    except RunFailedError as exc:
        report(exc.result, str(exc), as_json)
        return 1, state
    except (VectorBackupError, CeleryTimeout, Exception) as exc:  # noqa: BLE001 - any failure is reported
        message = output.stopped_message(status) if status is not None and state in STOPPED else None
        report(None, message or f"{type(exc).__name__}: {exc}", as_json)
        return 1, state
    report(stats, None, as_json)
    return 0, state


def report(stats: dict | None, error: str | None, as_json: bool) -> None:
    """The seeds' end-of-run summary; with --json, the stats under `vector_management_stats`."""
    if as_json:
        click.echo(json.dumps({"vector_management_stats": stats, "error": error}, ensure_ascii=False))
        return
    click.echo(output.summary_text(stats, error))
