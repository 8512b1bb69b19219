"""A run's own database (`db_connection`), kept out of every task argument.

The URL, password included, is stored in Redis under the run id with an expiry; tasks
carry only the flag `external_db`. Anyone who can read this Redis can read the broker's
messages too, so this adds no reader; results, logs and task arguments never see it.
"""

from __future__ import annotations

import dataclasses

import redis

from common import run_keys
from common.config import Settings
from common.db import DatabaseTarget, run_application_name
from common.exceptions import ConfigurationError

_key = run_keys.run_database


def store_run_database(client: redis.Redis, run_id: str, url: str, ttl_s: float) -> DatabaseTarget:
    """Validate `url` and keep it for the run's tasks."""
    target = DatabaseTarget.from_url(url)
    client.set(_key(run_id), url, ex=int(ttl_s))
    return target


def settings_for_run(settings: Settings, client: redis.Redis, run_id: str, external_db: bool) -> Settings:
    """`settings` with the run's own database when it was given one; the run's connections
    carry its id (`run_application_name`), so a cancel finds them."""
    database = settings.database
    if external_db:
        url = client.get(_key(run_id))
        if url is None:
            raise ConfigurationError(
                f"the database given for run {run_id} is no longer known (expired); nothing was done"
            )
        database = DatabaseTarget.from_url(url.decode())
    database = dataclasses.replace(database, application_name=run_application_name(run_id))
    return dataclasses.replace(settings, database=database)


def forget_run_database(client: redis.Redis, run_id: str) -> None:
    """Drop the run's URL once its last step has run: it is not kept longer than needed."""
    client.delete(_key(run_id))
