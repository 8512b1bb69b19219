"""Where backup sets live. A storage is one backup directory's files, by name.

A storage is a module here named for its URL scheme (`local` for plain paths) exposing
`open_location(location, temp_suffix)`, which returns an object with:

- `location` (shown to users) and `local_root` (the directory, or None when the files
  are not on a local filesystem: range-split then has its copiers send parts);
- `prepare()`: make the place ready for writing (a local directory is created);
- `writer(name, replace=False)`: a context manager yielding a binary file published
  whole under `name` when the block ends without an error, and never otherwise;
- `open(name)`: the file's bytes, unbuffered (a symbolic link or a non-regular file is
  refused: `UnsafeFile`); `stat(name)`: its `FileInfo`, or None when missing;
  `opened_info(file)`: the `FileInfo` of a file `open` returned (what is sent is what
  was described);
- `names(pattern)`: the regular files matching a glob pattern, sorted;
  `directories()`: the names of the directories (prefixes) directly inside;
  `present()`: whether the directory (any object under the prefix) exists;
- `pending(pattern)`: names being written now (temp files; multipart uploads in
  progress); `idle(pattern)`: those names and the seconds since each last moved;
  `discard_pending(pattern, older_than_s)`: remove those (abort them);
- `delete(name)`; `append_text(name, text)`: the set log shared by a directory's runs.

Storages: `local` (a directory) and `s3` (`s3://bucket/prefix`, any S3-compatible
store). Names are plain file names: anything with a path separator is refused. Adding a storage
is adding its module (and, for a new scheme, its settings in `common.config`).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any, NamedTuple

from common.exceptions import ConfigurationError


class FileInfo(NamedTuple):
    size: int
    mtime: float


class UnsafeFile(OSError):
    """A name that is a symbolic link or not a regular file: never followed or read."""


def open_storage(location: str | os.PathLike, temp_suffix: str = ".tmp") -> Any:
    """The storage a backup directory's location names: a path, or `scheme://...`."""
    text = os.fspath(location)
    scheme = text.split("://", 1)[0] if "://" in text else "local"
    if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", scheme):
        raise ConfigurationError(f"{text[:60]!r}: not a directory or a storage URL")
    try:
        module = importlib.import_module(f"{__name__}.{scheme}")
    except ModuleNotFoundError:
        raise ConfigurationError(f"{scheme}:// storage is not supported") from None
    return module.open_location(text, temp_suffix)


def as_storage(where: Any, temp_suffix: str = ".tmp") -> Any:
    """`where` if it is a storage already, else the storage its location names."""
    return where if hasattr(where, "names") else open_storage(where, temp_suffix)


def plain_name(name: str) -> str:
    """`name` if it is a plain file name; `UnsafeFile` otherwise."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise UnsafeFile(f"{str(name)[:100]!r} is not a plain file name")
    return name
