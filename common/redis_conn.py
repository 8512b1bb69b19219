"""The Redis a process talks to for runs: one client per URL and process, shared by the
clients that send and follow runs and by the tasks that work in them."""

from __future__ import annotations

import functools

import redis

from common import alerts
from common.config import Settings
from common.run_state import RunStates


@functools.cache
def redis_client(url: str) -> redis.Redis:
    """One connection pool per URL: a client opened per call would leak connections."""
    return redis.Redis.from_url(url)


def run_states(settings: Settings) -> RunStates:
    """The recorded states of runs, through the configured Redis; a run that fails or is
    abandoned is announced by whoever records it (`common.alerts`)."""
    client = redis_client(settings.runs.redis_url)
    return RunStates(client, settings.runs, on_end=functools.partial(alerts.run_ended, settings, client))
