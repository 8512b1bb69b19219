"""File formats of a backup set: how a table's rows are written, counted and read back.

A format is a module here named for it (`csv`), exposing `FORMAT`, an object with:

- `name`, `description` (for messages), `extension` (before any compression suffix);
- `copy_to(source, header)`: the `COPY ... TO STDOUT` that writes it (`header=False`:
  leaving out what a format can leave out), and `header_records` / `trailer_records`:
  how many of COPY's messages come before the first row and after the last;
- `copy_from(table, columns, header=True)`: the `COPY ... FROM STDIN` that reads it back
  (`header=False`: a share of a file without its header line), and `exact_types`: whether
  it restores only into columns of the types it was taken from;
- `splitter()`: a fresh object cutting one file, read once in order, where rows end, for
  a load through several COPYs (`common.parallel_load`): `head(data, final)` the length of
  the file's header, `split(piece)` (rows continuing the current share, rows starting a
  new one or None), `finish()` at the end, and the `prologue` and `epilogue` every share's
  COPY gets around its rows;
- `can_split`: whether range-split may join ranges of it into one file, and
  `range_header` / `trailer`: the bytes a range's COPY (`copy_to(..., header=False)`)
  sends before its first row and after its last, cut from every range because the
  joined file carries them once: its header is what a COPY of no rows sends without
  the trailer, and the trailer ends it (`common.copier.copy_range`, `copy_header`);
- `header_matches(stream, columns)` and `scan(stream, columns, id_column)`: whether the
  file starts as it should, and its row count and the distinct values of one column,
  from the decompressed bytes (`columns`: the manifest's [name, type] pairs); `errors`:
  what a malformed file raises while being read.

Adding a format is adding its module and allowing its name in `VECTOR_BACKUP_FORMAT`
(`common.config`).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from common.exceptions import ConfigurationError

DEFAULT = "csv"


def file_format(name: str) -> Any:
    """The format called `name`; `ConfigurationError` if there is none."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", name or ""):
        raise ConfigurationError(f"no backup file format called {str(name)[:40]!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}").FORMAT
    except (ModuleNotFoundError, AttributeError):
        raise ConfigurationError(f"no backup file format called {name!r}") from None
