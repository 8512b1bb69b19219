"""One run per database: a Redis lock keyed by the database (never its password).

A run's tasks run in different processes, so the lock's token is the run id: every task
of the run can renew, check or release it, and no other run can. The lock expires
unless renewed, so a worker killed mid-run blocks the database only until the expiry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import redis
from redis.exceptions import LockError


class RunLock:
    def __init__(self, client: redis.Redis, database: Mapping[str, Any], run_id: str, ttl_s: float) -> None:
        self.name = "vector:run-lock:{host}:{port}/{dbname}".format(**database)
        self.run_id = run_id
        self._client = client
        self._lock = client.lock(self.name, timeout=ttl_s, thread_local=False)

    def acquire(self) -> bool:
        """Take the lock for this run, or confirm and renew it if this run holds it already."""
        if self._lock.acquire(blocking=False, token=self.run_id):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Reset the expiry if this run still holds the lock; False if it does not, or if
        Redis cannot say so right now (a backup goes on; truncate refuses)."""
        self._lock.local.token = self.run_id.encode()
        try:
            self._lock.reacquire()
        except (LockError, redis.ConnectionError, redis.TimeoutError):
            return False
        return True

    def holder(self) -> str | None:
        value = self._client.get(self.name)
        return value.decode() if value else None

    def release(self) -> None:
        """Release if this run holds the lock; another run's lock is left alone."""
        self._lock.local.token = self.run_id.encode()
        with contextlib.suppress(LockError):
            self._lock.release()
