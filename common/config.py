"""Settings from environment variables, parsed by small typed readers.

Every variable is documented in docs/configuration.md. `load_settings()` reads the environment
each time it is called, so a worker picks up the process environment it was started
with and tests can point it at their own servers.
"""

from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.compression import check as check_compression
from common.db import DatabaseTarget
from common.exceptions import ConfigurationError
from common.storage import open_storage

COLLECTION_TABLE = "langchain_pg_collection"
EMBEDDING_TABLE = "langchain_pg_embedding"
# .env.example's secrets start with this; a placeholder is no secret.
PLACEHOLDER = "change-me"
# The file formats (common.formats) and storages (common.storage) a backup may use.
FILE_FORMATS = ("csv", "binary")
MEMORY = re.compile(r"[1-9][0-9]{0,6}(kB|MB|GB|TB)")
TASK_ID_PATTERN = re.compile(r"[a-zA-Z0-9_]+")  # matched whole (fullmatch): no trailing newline


@dataclass(frozen=True)
class VectorTableManagement:
    """The seeds' `vector_table_management` block."""

    backup_directory: str = "vector_bak"
    supported_tables: tuple[str, ...] = (COLLECTION_TABLE, EMBEDDING_TABLE)
    truncate_tables: tuple[str, ...] = (EMBEDDING_TABLE,)
    timestamp_format: str = "%Y%m%d_%H%M%S"
    backup_temp_suffix: str = ".tmp"
    progress_every: int = 50_000
    truncate_lock_timeout_s: float = 30.0
    compression: str = "none"
    file_format: str = "csv"  # a module of common.formats
    # Range-split backup: each of these tables gets `split_workers` chord header tasks;
    # above `split_min_mb` they copy block ranges in parallel under one snapshot.
    split_tables: tuple[str, ...] = (EMBEDDING_TABLE,)
    split_workers: int = 2
    split_min_mb: float = 64.0

    def __post_init__(self) -> None:
        check_compression(self.compression)
        if self.file_format not in FILE_FORMATS:
            raise ConfigurationError(f"VECTOR_BACKUP_FORMAT must be one of {', '.join(FILE_FORMATS)}")
        if not 1 <= self.split_workers <= 16:
            raise ConfigurationError("VECTOR_SPLIT_WORKERS must be between 1 and 16")
        if self.split_min_mb < 0:
            raise ConfigurationError("VECTOR_SPLIT_MIN_MB must be 0 or more")
        if not self.supported_tables:
            raise ConfigurationError("VECTOR_SUPPORTED_TABLES must name at least one table")
        unknown = [t for t in self.truncate_tables if t not in self.supported_tables]
        if unknown:
            raise ConfigurationError(
                f"VECTOR_TRUNCATE_TABLES {unknown} are not in VECTOR_SUPPORTED_TABLES; "
                "a table is only truncated after it has been backed up"
            )
        # The collection table holds the store's identity; the seeds never empty it.
        if any(_bare_name(t) == COLLECTION_TABLE for t in self.truncate_tables):
            raise ConfigurationError(f"{COLLECTION_TABLE} is never truncated")
        if self.progress_every < 1:
            raise ConfigurationError("VECTOR_PROGRESS_EVERY must be a positive number of rows")
        if not self.backup_temp_suffix or "/" in self.backup_temp_suffix:
            raise ConfigurationError("VECTOR_BACKUP_TEMP_SUFFIX must be a plain suffix such as .tmp")
        if "/" in self.backup_directory or self.backup_directory in ("", ".", ".."):
            raise ConfigurationError("VECTOR_BACKUP_DIRECTORY must be a single directory name")


@dataclass(frozen=True)
class RunControl:
    """How runs are de-duplicated and serialized (Redis keys with expiries)."""

    redis_url: str = "redis://localhost:6379/0"
    lock_ttl_s: float = 300.0
    lock_wait: str = "wait"
    lock_retry_delay_s: float = 10.0
    claim_ttl_s: float = 24 * 3600.0
    # A running task beats every `liveness_window_s / 6`; a run none of whose running
    # tasks beat for the whole window is abandoned, and its database lock freed.
    liveness_window_s: float = 30.0
    # Truncate refuses in a run requested longer ago than this: a late redelivery
    # (Redis's visibility timeout is 12 h) must never empty a store hours later.
    truncate_deadline_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.lock_wait not in ("wait", "fail"):
            raise ConfigurationError("VECTOR_LOCK_WAIT must be 'wait' or 'fail'")
        times = (self.lock_ttl_s, self.lock_retry_delay_s, self.claim_ttl_s, self.truncate_deadline_s)
        if min(times) <= 0:
            raise ConfigurationError("lock, claim and deadline times must be positive numbers of seconds")
        if self.liveness_window_s < 3:
            raise ConfigurationError("VECTOR_LIVENESS_WINDOW must be at least 3 seconds")

    @property
    def beat_every_s(self) -> float:
        """How often a running task renews its heartbeat and the run lock."""
        return self.liveness_window_s / 6

    @property
    def keep_s(self) -> int:
        """How long a run's state is kept: while its claim and its truncate deadline last."""
        return int(max(self.claim_ttl_s, self.truncate_deadline_s) + self.liveness_window_s)


@dataclass(frozen=True)
class RestoreSettings:
    """How a restore loads, builds indexes and swaps tables (docs/configuration.md)."""

    jobs: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))
    maintenance_work_mem: str = "512MB"
    parallel_workers: int = 2  # max_parallel_maintenance_workers for index builds
    lock_timeout_s: float = 0.5  # the longest a search queues behind one swap attempt
    swap_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.jobs <= 32:
            raise ConfigurationError("VECTOR_RESTORE_JOBS must be between 1 and 32")
        if not MEMORY.fullmatch(self.maintenance_work_mem):
            raise ConfigurationError("VECTOR_RESTORE_MAINTENANCE_WORK_MEM must look like 512MB or 2GB")
        if not 0 <= self.parallel_workers <= 64:
            raise ConfigurationError("VECTOR_RESTORE_PARALLEL_WORKERS must be between 0 and 64")
        if not 0 < self.lock_timeout_s <= 60 or self.swap_wait_s < self.lock_timeout_s:
            raise ConfigurationError(
                "VECTOR_RESTORE_LOCK_TIMEOUT must be between 0 and 60 seconds, and "
                "VECTOR_RESTORE_SWAP_WAIT at least as long"
            )


@dataclass(frozen=True)
class Settings:
    database: DatabaseTarget
    task_root: Path = Path("data_pipeline/training_data")
    vector: VectorTableManagement = field(default_factory=VectorTableManagement)
    runs: RunControl = field(default_factory=RunControl)
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    # Where backup directories live: None = under `task_root`; else a storage URL
    # (`s3://bucket/prefix`) or a directory (`VECTOR_STORAGE_URL`).
    storage_url: str | None = None
    # `check`: the newest set that verifies may be this old (`VECTOR_CHECK_MAX_AGE`).
    check_max_age_s: float = 26 * 3600.0
    # HMAC-SHA256 key for manifests: with it, a set is only trusted if its manifest is
    # signed with it (`VECTOR_SIGNING_KEY`).
    signing_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.signing_key is not None and len(self.signing_key) < 16:
            raise ConfigurationError("VECTOR_SIGNING_KEY must be at least 16 characters")
        if self.signing_key is not None and self.signing_key.startswith(PLACEHOLDER):
            raise ConfigurationError(
                "VECTOR_SIGNING_KEY is still .env.example's placeholder: set a secret one"
            )

    @property
    def root_location(self) -> str:
        """Where the task directories' backups live: `VECTOR_STORAGE_URL`, else the task root."""
        return self.storage_url or str(self.task_root)

    def backup_location(self, task_id: str | None = None) -> str:
        """`<root>/<task_id>/vector_bak`, or `<root>/vector_bak` without a task id."""
        task = [] if task_id is None else [validate_task_id(task_id)]
        return posixpath.join(self.root_location, *task, self.vector.backup_directory)

    def backup_directory(self, task_id: str | None = None) -> Path:
        """`backup_location` as a local path (the task root's, without `VECTOR_STORAGE_URL`)."""
        if "://" in self.root_location:
            raise ConfigurationError(f"backups are stored at {self.root_location}, not in a local directory")
        return Path(self.backup_location(task_id))

    def backup_storage(self, task_id: str | None = None) -> Any:
        """The storage of `backup_location(task_id)` (`common.storage`)."""
        return open_storage(self.backup_location(task_id), self.vector.backup_temp_suffix)

    def root_storage(self) -> Any:
        """The storage at the root: its directories are the task ids."""
        return open_storage(self.root_location, self.vector.backup_temp_suffix)


def validate_task_id(task_id: str) -> str:
    """Accept only the seeds' `^[a-zA-Z0-9_]+$`, which also keeps paths inside the root."""
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id) or len(task_id) > 128:
        raise ConfigurationError("task id must be 1-128 characters of letters, digits and underscores")
    return task_id


def _bare_name(table: str) -> str:
    return table.rsplit(".", 1)[-1]


def _tables(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(t.strip() for t in raw.split(",") if t.strip())


def _number(env: Mapping[str, str], name: str, default: float, kind: type = int):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None


def database_from_env(env: Mapping[str, str]) -> DatabaseTarget:
    """`VECTOR_DB_URL` if set, else `VECTOR_DB_HOST`/`PORT`/`NAME`/`USER`/`PASSWORD`."""
    url = env.get("VECTOR_DB_URL")
    if url:
        return DatabaseTarget.from_url(url)
    return DatabaseTarget.from_parts(
        host=env.get("VECTOR_DB_HOST", "localhost"),
        port=int(_number(env, "VECTOR_DB_PORT", 5432)),
        dbname=env.get("VECTOR_DB_NAME", "postgres"),
        user=env.get("VECTOR_DB_USER", "postgres"),
        password=env.get("VECTOR_DB_PASSWORD") or None,
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    defaults = VectorTableManagement()
    vector = VectorTableManagement(
        backup_directory=env.get("VECTOR_BACKUP_DIRECTORY", defaults.backup_directory),
        supported_tables=_tables(env, "VECTOR_SUPPORTED_TABLES", defaults.supported_tables),
        truncate_tables=_tables(env, "VECTOR_TRUNCATE_TABLES", defaults.truncate_tables),
        timestamp_format=env.get("VECTOR_TIMESTAMP_FORMAT", defaults.timestamp_format),
        backup_temp_suffix=env.get("VECTOR_BACKUP_TEMP_SUFFIX", defaults.backup_temp_suffix),
        progress_every=int(_number(env, "VECTOR_PROGRESS_EVERY", defaults.progress_every)),
        truncate_lock_timeout_s=float(
            _number(env, "VECTOR_TRUNCATE_LOCK_TIMEOUT", defaults.truncate_lock_timeout_s, float)
        ),
        compression=env.get("VECTOR_BACKUP_COMPRESSION", defaults.compression),
        file_format=env.get("VECTOR_BACKUP_FORMAT", defaults.file_format),
        split_tables=_tables(env, "VECTOR_SPLIT_TABLES", defaults.split_tables),
        split_workers=int(_number(env, "VECTOR_SPLIT_WORKERS", defaults.split_workers)),
        split_min_mb=float(_number(env, "VECTOR_SPLIT_MIN_MB", defaults.split_min_mb, float)),
    )
    runs = RunControl(
        redis_url=env.get("VECTOR_LOCK_REDIS_URL") or env.get("CELERY_BROKER_URL", RunControl.redis_url),
        lock_ttl_s=float(_number(env, "VECTOR_LOCK_TTL", RunControl.lock_ttl_s, float)),
        lock_wait=env.get("VECTOR_LOCK_WAIT", RunControl.lock_wait),
        lock_retry_delay_s=float(
            _number(env, "VECTOR_LOCK_RETRY_DELAY", RunControl.lock_retry_delay_s, float)
        ),
        claim_ttl_s=float(_number(env, "VECTOR_CLAIM_TTL", RunControl.claim_ttl_s, float)),
        liveness_window_s=float(_number(env, "VECTOR_LIVENESS_WINDOW", RunControl.liveness_window_s, float)),
        truncate_deadline_s=float(
            _number(env, "VECTOR_TRUNCATE_DEADLINE", RunControl.truncate_deadline_s, float)
        ),
    )
    how = RestoreSettings()
    restore = RestoreSettings(
        jobs=int(_number(env, "VECTOR_RESTORE_JOBS", how.jobs)),
        maintenance_work_mem=env.get("VECTOR_RESTORE_MAINTENANCE_WORK_MEM", how.maintenance_work_mem),
        parallel_workers=int(_number(env, "VECTOR_RESTORE_PARALLEL_WORKERS", how.parallel_workers)),
        lock_timeout_s=float(_number(env, "VECTOR_RESTORE_LOCK_TIMEOUT", how.lock_timeout_s, float)),
        swap_wait_s=float(_number(env, "VECTOR_RESTORE_SWAP_WAIT", how.swap_wait_s, float)),
    )
    return Settings(
        database=database_from_env(env),
        task_root=Path(env.get("VECTOR_TASK_ROOT", "data_pipeline/training_data")),
        vector=vector,
        runs=runs,
        restore=restore,
        signing_key=env.get("VECTOR_SIGNING_KEY") or None,
        storage_url=_storage_url(env),
        check_max_age_s=_duration(env, "VECTOR_CHECK_MAX_AGE", 26 * 3600.0),
    )


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, from a number of seconds or a number with s, m, h or d."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", raw)
    if not found or float(found[1]) <= 0:
        raise ConfigurationError(f"{name} must be a positive duration such as 26h, 90m or 3600")
    return float(found[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]


def _storage_url(env: Mapping[str, str]) -> str | None:
    url = (env.get("VECTOR_STORAGE_URL") or "").strip() or None
    if url is not None and "://" in url:
        if not url.startswith("s3://"):
            raise ConfigurationError("VECTOR_STORAGE_URL must be a directory or an s3://bucket/prefix URL")
        from common.storage.s3 import S3Options, split_url  # boto3 is imported only where S3 is used

        bucket, prefix = split_url(url)
        url = f"s3://{bucket}/{prefix}".rstrip("/")
        S3Options.from_env(env)  # a wrong endpoint or part size is refused with the other settings
    return url


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API's own settings (`python -m worker api`)."""

    wait_s: float = 60.0
    allowed_db_hosts: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 64 * 1024
    # Requests that may wait for their run at once (each holds a server thread), and
    # runs that may be live per database before a request for a new one is refused.
    max_waiting: int = 4
    max_runs: int = 4


def load_api_settings(env: Mapping[str, str] | None = None) -> ApiSettings:
    """`VECTOR_API_WAIT`, `VECTOR_API_DB_HOSTS` (default: the configured database's host)
    and `API_TOKEN`."""
    env = os.environ if env is None else env
    hosts = _tables(env, "VECTOR_API_DB_HOSTS", (database_from_env(env).host,))
    wait_s = float(_number(env, "VECTOR_API_WAIT", ApiSettings.wait_s, float))
    if wait_s < 0:
        raise ConfigurationError("VECTOR_API_WAIT must be zero or a positive number of seconds")
    token = env.get("API_TOKEN") or None
    if token is not None and token.startswith(PLACEHOLDER):
        raise ConfigurationError("API_TOKEN is still .env.example's placeholder: set a secret one")
    max_waiting = int(_number(env, "VECTOR_API_MAX_WAITING", ApiSettings.max_waiting))
    max_runs = int(_number(env, "VECTOR_API_MAX_RUNS", ApiSettings.max_runs))
    if max_waiting < 0 or max_runs < 1:
        raise ConfigurationError("VECTOR_API_MAX_WAITING must be 0 or more, VECTOR_API_MAX_RUNS 1 or more")
    return ApiSettings(
        wait_s=wait_s,
        allowed_db_hosts=hosts,
        token=token,
        max_waiting=max_waiting,
        max_runs=max_runs,
    )


@dataclass(frozen=True)
class Schedules:
    """celery beat: the nightly backup (never a truncate) and the retention cleanup.

    A schedule is a 5-field cron string in `CELERY_TIMEZONE`, or a number of seconds.
    """

    backup: str = "0 2 * * *"
    retention: str = "30 3 * * *"
    keep: int = 7
    max_age_days: float = 0.0
    # An upload idle this long (no part sent, a temp file not written) belongs to a dead
    # run or to an abort that could not reach the storage: retention aborts it.
    pending_upload_max_age_s: float = 86400.0
    # Restore drills (`common.drill`): into this scratch database, off when unset.
    drill_db_url: str | None = field(default=None, repr=False)
    drill: str = "0 4 * * *"
    # The nightly backup counts as missed once its scheduled time is this far past and no
    # nightly run was sent (beat's entry expires after an hour: a task that late is dropped).
    backup_grace_s: float = 7200.0


def load_schedules(env: Mapping[str, str] | None = None) -> Schedules:
    """`VECTOR_BACKUP_SCHEDULE`, `VECTOR_RETENTION_SCHEDULE`, `VECTOR_RETENTION_KEEP`,
    `VECTOR_RETENTION_DAYS`, `VECTOR_PENDING_UPLOAD_MAX_AGE`."""
    env = os.environ if env is None else env
    schedules = Schedules(
        backup=env.get("VECTOR_BACKUP_SCHEDULE") or Schedules.backup,
        retention=env.get("VECTOR_RETENTION_SCHEDULE") or Schedules.retention,
        keep=int(_number(env, "VECTOR_RETENTION_KEEP", Schedules.keep)),
        max_age_days=float(_number(env, "VECTOR_RETENTION_DAYS", Schedules.max_age_days, float)),
        pending_upload_max_age_s=float(
            _number(env, "VECTOR_PENDING_UPLOAD_MAX_AGE", Schedules.pending_upload_max_age_s, float)
        ),
        drill_db_url=env.get("VECTOR_DRILL_DB_URL") or None,
        drill=env.get("VECTOR_DRILL_SCHEDULE") or Schedules.drill,
        backup_grace_s=float(_number(env, "VECTOR_BACKUP_GRACE", Schedules.backup_grace_s, float)),
    )
    if schedules.keep < 0 or schedules.max_age_days < 0 or schedules.pending_upload_max_age_s < 0:
        raise ConfigurationError(
            "VECTOR_RETENTION_KEEP, VECTOR_RETENTION_DAYS and VECTOR_PENDING_UPLOAD_MAX_AGE "
            "must not be negative"
        )
    if schedules.backup_grace_s <= 0:
        raise ConfigurationError("VECTOR_BACKUP_GRACE must be a positive number of seconds")
    return schedules


@dataclass(frozen=True)
class AlertSettings:
    """Where and how alerts are posted (`common.alerts`); off without a webhook."""

    # A webhook URL may carry a secret in its path (Slack, Teams): never shown.
    webhook: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    retries: int = 8
    backoff_s: float = 2.0
    backoff_max_s: float = 600.0


def load_alert_settings(env: Mapping[str, str] | None = None) -> AlertSettings:
    """`VECTOR_ALERT_WEBHOOK`, `VECTOR_ALERT_WEBHOOK_TOKEN`, `VECTOR_ALERT_TIMEOUT`,
    `VECTOR_ALERT_RETRIES`, `VECTOR_ALERT_BACKOFF`."""
    env = os.environ if env is None else env
    token = env.get("VECTOR_ALERT_WEBHOOK_TOKEN") or None
    if token is not None and (token.startswith(PLACEHOLDER) or not token.isprintable() or " " in token):
        raise ConfigurationError(
            "VECTOR_ALERT_WEBHOOK_TOKEN must be one printable word that is not .env.example's placeholder"
        )
    alerts = AlertSettings(
        webhook=_webhook(env.get("VECTOR_ALERT_WEBHOOK", "").strip() or None),
        token=token,
        timeout_s=float(_number(env, "VECTOR_ALERT_TIMEOUT", AlertSettings.timeout_s, float)),
        retries=int(_number(env, "VECTOR_ALERT_RETRIES", AlertSettings.retries)),
        backoff_s=float(_number(env, "VECTOR_ALERT_BACKOFF", AlertSettings.backoff_s, float)),
    )
    if not 0 < alerts.timeout_s <= 60 or not 0 <= alerts.retries <= 20 or alerts.backoff_s <= 0:
        raise ConfigurationError(
            "VECTOR_ALERT_TIMEOUT must be between 0 and 60 seconds, VECTOR_ALERT_RETRIES between "
            "0 and 20, VECTOR_ALERT_BACKOFF a positive number of seconds"
        )
    return alerts


def _webhook(url: str | None) -> str | None:
    """An http(s) URL with a host and no user or password. The refusal never repeats the
    value: a user, a password or a secret path would land in a log."""
    if url is None:
        return None
    refused = ConfigurationError(
        "VECTOR_ALERT_WEBHOOK must be an http:// or https:// URL with a host and without a "
        "user or password (send a token with VECTOR_ALERT_WEBHOOK_TOKEN)"
    )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise refused
    if not url.isprintable() or " " in url:
        raise refused
    return url
