"""`check`'s look at the run locks and claims in Redis: a lock no live run holds keeps
every run of its database waiting (until it expires, if it ever does); a claim whose run's
record is gone means Redis lost keys it should have kept (eviction, a manual delete).

Reading a holder's state judges it as every observer does: a dead run's end is recorded
there, and that frees its lock, so what is left is what no run will free.
"""

from __future__ import annotations

import redis

from common import run_keys
from common.health import CRITICAL, OK, WARNING, Check
from common.run_state import LIVE, RunStates

SHOWN = 3


def locks_and_claims(client: redis.Redis, states: RunStates) -> Check:
    status, held, problems = OK, 0, []
    for key in client.scan_iter(match=run_keys.RUN_LOCKS, count=500):
        holder = _text(client.get(key))
        run = states.status(holder) if holder else None
        if run is not None and run.get("state") in LIVE:
            held += 1
            continue
        ttl = client.ttl(key)
        if ttl == -2:
            continue  # freed meanwhile, by its run's end
        what = f"{_text(key)} is held by run {holder or '?'} ({run['state'] if run else 'no record'})"
        if ttl < 0:
            status = CRITICAL
            problems.append(f"{what} and never expires: no run of that database can start; delete the key")
        else:
            status = max(status, WARNING)
            problems.append(f"{what}; it frees itself in {ttl} s")
    for key in client.scan_iter(match=run_keys.CLAIMS, count=500):
        run_id = _text(client.get(key))
        if run_id and states.status(run_id) is None:
            status = max(status, WARNING)
            problems.append(f"{_text(key)} names run {run_id}, whose record is gone (Redis evicting keys?)")
    if problems:
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        return Check("locks and claims", status, "; ".join(problems[:SHOWN]) + more)
    return Check("locks and claims", OK, f"none stale ({held} database lock(s) held by live runs)")


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value else ""
