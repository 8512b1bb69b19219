"""A table's backup progress: one type, and the one place its percentage is computed."""

from __future__ import annotations

from typing import TypedDict


class TableProgress(TypedDict):
    table: str
    step: str
    rows: int
    total_estimate: int | None
    bytes: int
    percent: float | None


def percent(rows: int, total: int | None, done: bool = False) -> float | None:
    """100 once done; before that the share of the planner's row estimate, kept below 100
    (the estimate may be low); None without an estimate."""
    if done:
        return 100.0
    return round(min(99.9, 100.0 * rows / total), 1) if total else None
