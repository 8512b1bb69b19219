"""Atomic file publication: a reader sees the whole file under its final name, or nothing."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

WRITE_BUFFER = 1 << 20


@contextlib.contextmanager
def atomic_output(final: Path, temp_suffix: str = ".tmp", replace: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file at `final + temp_suffix`; publish it as `final` only on success.

    On success the data is flushed and fsynced, renamed into place and the directory is
    fsynced so the rename survives a crash. On any error the temp file is removed and the
    error re-raised; an existing `final` is overwritten only with `replace`.
    """
    if final.exists() and not replace:
        raise FileExistsError(f"{final.name} already exists; refusing to overwrite a backup")
    temp = temp_path(final, temp_suffix)
    out = _open_temp(temp)
    flusher = _Flusher(out.fileno())
    try:
        try:
            yield out
        finally:
            flusher.stop()
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


def temp_path(final: Path, temp_suffix: str) -> Path:
    """Where `atomic_output` writes `final` until it is complete."""
    return final.with_name(final.name + temp_suffix)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Flusher(threading.Thread):
    """Syncs the file to disk while it is still being written, so the final fsync has
    only the tail left: the disk works during the COPY instead of after it."""

    EVERY_BYTES = 64 << 20

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True, name="backup-flusher")
        self._fd, self._done, self._synced = fd, threading.Event(), 0
        self.start()

    def run(self) -> None:
        while not self._done.wait(0.25):
            try:
                size = os.fstat(self._fd).st_size
                if size - self._synced >= self.EVERY_BYTES:
                    os.fdatasync(self._fd)
                    self._synced = size
            except OSError:
                return  # the writer sees any real error itself; the final fsync still runs

    def stop(self) -> None:
        self._done.set()
        self.join()


def _open_temp(temp: Path) -> BinaryIO:
    """Create `temp` exclusively and hold an flock on it while it is written.

    A temp file left by a writer that was killed (SIGKILL, OOM, power loss) carries no
    lock any more, so it is removed and the write goes ahead; one whose writer is alive
    is refused, so two writers never interleave.
    """
    for _ in range(2):
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _remove_if_abandoned(temp):
                continue
            raise FileExistsError(f"{temp.name} is being written by another process") from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.fdopen(fd, "wb", buffering=WRITE_BUFFER)
    raise FileExistsError(f"{temp.name} keeps reappearing; another writer is racing for it")


def _remove_if_abandoned(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        # Unlink only the file we locked, not one a new writer just created in its place.
        if os.stat(temp).st_ino == os.fstat(fd).st_ino:
            temp.unlink()
        return True
    except FileNotFoundError:
        return True
    finally:
        os.close(fd)
