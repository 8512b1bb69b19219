"""One run per database: a Redis lock keyed by the database (never its password).

A run's tasks run in different processes, so the lock's token is the run id: every task
of the run can renew, check or release it, and no other run can. While a task of the
run works, its heartbeat renews the lock for the liveness window; between two steps the
lock is held for `VECTOR_LOCK_TTL`. So a worker killed mid-run blocks the database only
for the window, and a run waiting for a worker keeps its database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import redis
from redis.exceptions import LockError

from common import run_keys

lock_name = run_keys.run_lock


class RunLock:
    def __init__(self, client: redis.Redis, database: Mapping[str, Any], run_id: str, ttl_s: float) -> None:
        self.name = lock_name(database)
        self.run_id = run_id
        self._client = client
        self._lock = client.lock(self.name, timeout=ttl_s, thread_local=False)

    def acquire(self) -> bool:
        """Take the lock for this run, or confirm and renew it if this run holds it already."""
        if self._lock.acquire(blocking=False, token=self.run_id):
            return True
        return self.renew()

    def renew(self, ttl_s: float | None = None) -> bool:
        """Reset the expiry (to `ttl_s`, or the lock's own) if this run still holds the lock;
        False if it does not, or if Redis cannot say so right now (a backup goes on;
        truncate refuses)."""
        self._lock.local.token = self.run_id.encode()
        try:
            if ttl_s is None:
                self._lock.reacquire()
            else:
                self._lock.extend(ttl_s, replace_ttl=True)
        except (LockError, redis.ConnectionError, redis.TimeoutError):
            return False
        return True

    def holder(self) -> str | None:
        value = self._client.get(self.name)
        return value.decode() if value else None

    def release(self) -> None:
        """Release if this run holds the lock; another run's lock is left alone."""
        self._lock.local.token = self.run_id.encode()
        with contextlib.suppress(LockError, redis.ConnectionError, redis.TimeoutError):
            self._lock.release()
