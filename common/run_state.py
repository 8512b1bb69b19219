"""What became of a run: its recorded state, the heartbeats of its tasks, and who may end it.

    queued -> running -> succeeded | failed | cancelled | abandoned

Every task of a run begins by asking the record whether the run is still live, keeps a
heartbeat (a key that expires after the liveness window) while it works, and ends by
saying so. A run some of whose tasks are running, none of which beats any more, lost
its workers: whoever looks at it next (a task, a client, the next run waiting for its
database) records it as abandoned and frees its database lock. A run between two steps
(no task running) is waiting for a worker, not dead.

Every transition is one Lua script, so two observers never both win one: ten clients
and a redelivered task may judge the same run at once. The one whose script recorded the
run's end calls `on_end` with the run's record (alerts hang there: `common.alerts`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import redis

from common import run_keys
from common import run_scripts as scripts
from common.config import RunControl
from common.run_lock import lock_name

log = logging.getLogger(__name__)
QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED, ABANDONED = "succeeded", "failed", "cancelled", "abandoned"
LIVE = (QUEUED, RUNNING)
# A run's task ends at once in these: it must neither copy, truncate nor keep files.
STOPPED = (CANCELLED, ABANDONED)
INDEX = run_keys.RUNS_INDEX
# A Redis restart must not fail a run's task for want of its record: calls wait this long.
REDIS_PATIENCE_S = 60.0
# The scripts that judge a run's liveness (the others never read ARGV[4]).
JUDGING = ("judge", "begin", "finish", "cancel")


class RunStatus(TypedDict, total=False):
    run_id: str
    task_id: str | None
    database: dict[str, Any]
    truncate: bool
    state: str
    reason: str
    requested_at: float
    started_at: float | None
    heartbeat_at: float | None
    finished_at: float | None
    superseded_by: str | None
    tables: dict[str, dict[str, Any]]


class RunStates:
    """The state records of runs, in the run lock's Redis.

    `on_end(status)` is called once per run, by the observer that recorded its end
    (succeeded, failed, cancelled or abandoned); its errors are logged, never raised.
    """

    def __init__(
        self,
        client: redis.Redis,
        control: RunControl,
        on_end: Callable[[RunStatus], None] | None = None,
    ) -> None:
        self.client, self.control, self.on_end = client, control, on_end
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("judge", scripts.judging(scripts.JUST_JUDGE)),
                ("begin", scripts.judging(scripts.BEGIN)),
                ("beat", scripts.BEAT),
                ("end", scripts.END),
                ("finish", scripts.judging(scripts.FINISH)),
                ("cancel", scripts.judging(scripts.CANCEL)),
                ("truncating", scripts.TRUNCATING),
                ("swap_claim", scripts.SWAP_CLAIM),
            )
        }

    @staticmethod
    def _keys(run_id: str) -> list[str]:
        return [run_keys.run_state(run_id), run_keys.run_tasks(run_id)]

    def _call(
        self, script: str, run_id: str, reason: str = "", *more: Any, patience: float = -1
    ) -> str | None:
        control = self.control

        def call() -> Any:
            # Asking Redis its uptime costs a round trip: a heartbeat, every few seconds
            # per task, never needs it.
            may_judge = script in JUDGING and self._may_judge()
            args = [
                run_keys.run_beat_prefix(run_id),
                repr(time.time()),
                reason,
                "1" if may_judge else "0",
                control.truncate_deadline_s,
                control.keep_s,
                int(control.liveness_window_s),
                *more,
            ]
            return self._scripts[script](keys=self._keys(run_id), args=args)

        value = patiently(call, REDIS_PATIENCE_S if patience < 0 else patience)
        if script in JUDGING:
            # A reply lost after the script ran is retried by `patiently` and then finds
            # the run already ended: that rare end goes unannounced (the record is right).
            value, ended = value
            if ended:
                self._ended(run_id)
        return value.decode() if isinstance(value, bytes) else value

    def _ended(self, run_id: str) -> None:
        """This observer recorded the run's end: tell `on_end`, which must never fail the caller."""
        if self.on_end is None:
            return
        try:
            status = self._record(run_id)
            if status is not None:
                self.on_end(status)
        except Exception as exc:  # noqa: BLE001 - an alert must never fail or stop a run
            log.warning("run %s ended, but its end could not be announced: %s", run_id, type(exc).__name__)

    def _may_judge(self) -> bool:
        """Not in the first window after Redis restarted: every heartbeat key expired while
        it was down, and live tasks need one beat to show they are alive."""
        try:
            uptime = self.client.info("server").get("uptime_in_seconds", 0)
        except redis.ResponseError:  # INFO renamed away, as some hosted Redis do
            return True
        return uptime >= self.control.liveness_window_s

    def _dead_reason(self, run_id: str) -> str:
        window = self.control.liveness_window_s
        return f"its workers stopped: no running task of run {run_id} beat for {window:g} s"

    def create(
        self,
        run_id: str,
        task_id: str | None,
        database: Mapping[str, Any],
        truncate: bool,
        requested_at: float | None = None,
    ) -> None:
        """Record a run as queued; it shows in `recent` until it expires."""
        requested_at = time.time() if requested_at is None else requested_at
        key = self._keys(run_id)[0]
        record = {
            "run_id": run_id,
            "task_id": task_id or "",
            "database": json.dumps(dict(database)),
            "lock": lock_name(database),
            "truncate": int(truncate),
            "state": QUEUED,
            "requested_at": repr(requested_at),
        }
        with self.client.pipeline() as pipe:
            pipe.hsetnx(key, "state", QUEUED)  # never resets a run that already began
            pipe.hset(key, mapping={k: v for k, v in record.items() if k != "state"})
            pipe.expire(key, self.control.keep_s)
            pipe.zadd(INDEX, {run_id: requested_at})
            pipe.zremrangebyscore(INDEX, "-inf", time.time() - self.control.keep_s)
            pipe.execute()

    def forget(self, run_id: str) -> None:
        """Drop a run that was never sent."""
        with self.client.pipeline() as pipe:
            pipe.delete(*self._keys(run_id))
            pipe.zrem(INDEX, run_id)
            pipe.execute()

    def begin_task(self, run_id: str, task_id: str) -> str:
        """Mark `task_id` running and start its heartbeat if the run is live: 'running';
        otherwise the run's state ('missing' if unknown), and the task must not work."""
        return self._call("begin", run_id, self._dead_reason(run_id), task_id)

    def beat(self, run_id: str, task_id: str) -> str | None:
        """Renew `task_id`'s heartbeat while the run is running; the run's state."""
        # No waiting: the next beat tries again.
        return self._call("beat", run_id, "", task_id, patience=0)

    def state(self, run_id: str) -> str | None:
        """The run's recorded state, as is (None if unknown)."""
        value = patiently(lambda: self.client.hget(self._keys(run_id)[0], "state"), REDIS_PATIENCE_S)
        return value.decode() if value else None

    def end_task(self, run_id: str, task_id: str) -> str | None:
        """`task_id` no longer works (done, failed, or waiting to be retried); the run's state."""
        return self._call("end", run_id, "", task_id)

    def finish(
        self, run_id: str, state: str, reason: str = "", since: tuple[str, ...] = LIVE, patience: float = -1
    ) -> bool:
        """Record the run's end, if it is still in one of `since`; frees its database lock."""
        return self._call("finish", run_id, reason, state, *since, patience=patience) == "ok"

    def cancel(self, run_id: str, reason: str) -> str:
        """'ok' if the run is now cancelled (its lock freed); else why not: its state,
        'truncating', or 'missing'."""
        return self._call("cancel", run_id, reason) or "missing"

    def start_truncating(self, run_id: str) -> str:
        """The point of no return: 'running' if the run may truncate now (and can no
        longer be cancelled), else its state."""
        return self._call("truncating", run_id) or "missing"

    def record_tables(self, run_id: str, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Each table's outcome, for `runs` and the API."""
        outcomes = {
            table: {
                "success": bool(info.get("success")),
                "rows": info.get("row_count", 0),
                **({"error": info["error"]} if info.get("error") else {}),
            }
            for table, info in tables.items()
        }
        key = self._keys(run_id)[0]
        patiently(lambda: self.client.hset(key, "tables", json.dumps(outcomes)), REDIS_PATIENCE_S)

    def supersede(self, run_id: str, newer: str) -> None:
        """`newer` replaces this run for its pipeline task: it is cancelled if still live."""
        self.client.hset(self._keys(run_id)[0], "superseded_by", newer)
        self.cancel(run_id, f"superseded by run {newer}")

    def swap_claim(self, claim: str, old: str, new: str, ttl_s: int) -> bool:
        """Point `claim` at `new` only if it still names `old`: one winner among racers."""
        return bool(self._scripts["swap_claim"](keys=[claim], args=[old, new, ttl_s]))

    def status(self, run_id: str) -> RunStatus | None:
        """The run's record, judged for liveness first; None if unknown or expired."""
        self._call("judge", run_id, self._dead_reason(run_id))
        return self._record(run_id)

    def _record(self, run_id: str) -> RunStatus | None:
        """The run's record as it is, not judged."""
        raw = patiently(lambda: self.client.hgetall(self._keys(run_id)[0]), REDIS_PATIENCE_S)
        if not raw or b"state" not in raw:
            return None
        return _status({k.decode(): v.decode() for k, v in raw.items()})

    def live_runs(self, database: Mapping[str, Any], scan: int = 200) -> list[str]:
        """The queued or running runs of `database` among the newest `scan` runs, judged."""
        run_ids = [r.decode() for r in self.client.zrevrange(INDEX, 0, scan - 1)]
        with self.client.pipeline() as pipe:
            for run_id in run_ids:
                pipe.hmget(self._keys(run_id)[0], "state", "lock")
            fields = pipe.execute()
        name = lock_name(database).encode()
        candidates = [r for r, (state, lock) in zip(run_ids, fields, strict=True) if lock == name and state]
        return [r for r in candidates if (self.status(r) or {}).get("state") in LIVE]

    def recent(self, limit: int = 20) -> list[RunStatus]:
        """The newest runs first."""
        run_ids = [r.decode() for r in self.client.zrevrange(INDEX, 0, max(0, limit - 1))]
        return [s for s in map(self.status, run_ids) if s is not None]


def patiently(call: Callable[[], Any], patience_s: float) -> Any:
    """`call()`, tried again with backoff while Redis is unreachable, for `patience_s`."""
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _number(value: str | None) -> float | None:
    return float(value) if value else None


def _status(raw: dict[str, str]) -> RunStatus:
    return RunStatus(
        run_id=raw.get("run_id", ""),
        task_id=raw.get("task_id") or None,
        database=json.loads(raw.get("database") or "{}"),
        truncate=raw.get("truncate") == "1",
        state=raw["state"],
        reason=raw.get("reason", ""),
        requested_at=float(raw.get("requested_at") or 0),
        started_at=_number(raw.get("started_at")),
        heartbeat_at=_number(raw.get("heartbeat_at")),
        finished_at=_number(raw.get("finished_at")),
        superseded_by=raw.get("superseded_by") or None,
        tables=json.loads(raw.get("tables") or "{}"),
    )
