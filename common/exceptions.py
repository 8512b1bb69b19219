"""The project's errors. The CLI and the API map these to exit codes and HTTP statuses.

Every message is written for the operator: it names the table, the step that failed and
the reason, and never contains a password.
"""

from __future__ import annotations

from typing import Any


class VectorBackupError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigurationError(VectorBackupError):
    """A setting is missing or invalid."""


class DatabaseUnavailableError(VectorBackupError):
    """PostgreSQL could not be reached or refused the connection."""


class BackupError(VectorBackupError):
    """One table's backup failed; no `.csv` was left behind for it."""


class TableNotFoundError(BackupError):
    """The table to back up does not exist."""


class PermissionDeniedError(BackupError):
    """The database user lacks a privilege the operation needs."""


class RunFailedError(VectorBackupError):
    """A step of a run failed; ``result`` carries the run's result dict for the report.

    Both arguments go into ``args`` so the error survives Celery's JSON serialization.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message, result)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


class VerifyError(VectorBackupError):
    """A backup set does not match its manifest, or the manifest is unusable."""


class StorageError(VectorBackupError, OSError):
    """Object storage refused or could not be reached; the message names the location
    and the reason, never a credential. An `OSError` too: a file that cannot be read."""


class RestoreError(VectorBackupError):
    """A restore failed and was rolled back; the database is as it was."""


class BackupFailedError(RunFailedError):
    """At least one table of a backup set failed; nothing chained after it may run."""


class TruncateRefusedError(RunFailedError):
    """Truncate was refused: the backup it depends on is not proven complete, or the
    table changed since it was backed up. Nothing was truncated."""


class TruncateError(RunFailedError):
    """TRUNCATE itself failed and was rolled back; the backup files are kept."""


class RunEndedError(RunFailedError):
    """The run was cancelled, abandoned, superseded or has already ended: a task of it
    did nothing (no copy, no truncate), and files it left were removed."""


class RunNotCancellable(VectorBackupError):
    """The run has ended (or is truncating, one short transaction): nothing to cancel."""


class AlertDeliveryError(VectorBackupError):
    """The alert webhook did not take an alert. ``transient`` (unreachable, timed out, 5xx,
    408, 429): worth trying again. The message never holds the webhook's URL, which may
    carry a secret in its path.

    Both arguments go into ``args`` so the error survives Celery's JSON serialization.
    """

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message, transient)
        self.message = message
        self.transient = transient

    def __str__(self) -> str:
        return self.message
