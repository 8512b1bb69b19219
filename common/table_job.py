"""One table's backup, as the copiers receive it: what to copy, where, and how to report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from os import PathLike
from typing import Any

from common import formats
from common.compression import suffix as compression_suffix
from common.config import VectorTableManagement
from common.progress import TableProgress
from common.storage import open_storage

ProgressCallback = Callable[[TableProgress], None]


def backup_file_name(table: str, timestamp: str, compression: str = "none", file_format: str = "csv") -> str:
    return f"{table}_{timestamp}{formats.file_format(file_format).extension}{compression_suffix(compression)}"


@dataclass(frozen=True)
class TableJob:
    """`table` into the storage's `{table}_{timestamp}.csv[.zst|.gz]` (a `Path` is taken
    as a local directory).

    `fingerprint`: also read a content fingerprint in the snapshot, which truncate
    compares with the table under its lock. `replace`: a re-take may supersede this set's
    own earlier file (never a file of a set that has a manifest; the caller decides).
    """

    table: str
    storage: Any  # common.storage
    timestamp: str
    settings: VectorTableManagement
    on_progress: ProgressCallback | None = None
    fingerprint: bool = False
    replace: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.storage, (str, PathLike)):
            object.__setattr__(self, "storage", open_storage(self.storage, self.settings.backup_temp_suffix))

    @property
    def format(self) -> Any:
        return formats.file_format(self.settings.file_format)

    @property
    def file_name(self) -> str:
        settings = self.settings
        return backup_file_name(self.table, self.timestamp, settings.compression, settings.file_format)

    def reporting_to(self, on_progress: ProgressCallback | None) -> TableJob:
        return replace(self, on_progress=on_progress)

    def report(self, progress: TableProgress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)
