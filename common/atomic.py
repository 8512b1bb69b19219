"""Atomic file publication: a reader sees the whole file under its final name, or nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

WRITE_BUFFER = 1 << 20


@contextlib.contextmanager
def atomic_output(final: Path, temp_suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Yield a binary file at `final + temp_suffix`; publish it as `final` only on success.

    On success the data is flushed and fsynced, renamed into place and the directory is
    fsynced so the rename survives a crash. On any error the temp file is removed and the
    error re-raised; an existing `final` is never overwritten.
    """
    if final.exists():
        raise FileExistsError(f"{final.name} already exists; refusing to overwrite a backup")
    temp = final.with_name(final.name + temp_suffix)
    # "x": a second writer racing for the same name fails instead of interleaving.
    out = open(temp, "xb", buffering=WRITE_BUFFER)  # noqa: SIM115 - closed below on every path
    try:
        yield out
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.replace(temp, final)
        fsync_directory(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
