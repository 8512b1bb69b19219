"""One file written by several processes at once, each appending whole rows.

A range-split backup's copiers write their rows straight into the table's `.csv.tmp`
instead of into part files the holder copies over: joining parts wrote half the table
twice and cost more than a third of the split's CPU on two cores (`make bench`).
Every writer opens the file with O_APPEND and hands the kernel whole rows in blocks of
about a megabyte; one `write` to a local file is placed at the end and never interleaved
with another, so blocks of different writers follow one another and each row stays
whole (a short write, which only a full disk or a file size limit causes, fails the
backup: the rest of its block is never written). Rows leave in the order the chunks
finish, which COPY FROM does not mind.

The file's sha256 cannot be taken while writing, so `TailHasher` reads the file behind
the writers, from the page cache, and hashes it in order as it grows.

Only local filesystems place appends atomically: over NFS (open(2): "O_APPEND may lead
to corrupted files on NFS filesystems if more than one process appends data to a file
at once"), SMB or FUSE the copiers fall back to part files (`appends_safely`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from typing import BinaryIO

BLOCK = 1 << 20
# Filesystems that serialize O_APPEND writes to one file (overlay writes to one of these).
LOCAL = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay"})


def filesystem_type(path: os.PathLike) -> str:
    """The type of the filesystem `path` is on (Linux: from /proc/self/mountinfo); "" if unknown."""
    target, best, kind = os.path.realpath(path), "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point = fields[4].replace("\\040", " ")
                fs_type = fields[fields.index("-") + 1]
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, kind = mount_point, fs_type
    except (OSError, ValueError, IndexError):
        return ""
    return kind


def appends_safely(directory: os.PathLike) -> bool:
    return filesystem_type(directory) in LOCAL


def identity(fd: int) -> list[int]:
    st = os.fstat(fd)
    return [st.st_dev, st.st_ino]


def open_for_appending(path: os.PathLike, expected: list[int]) -> int | None:
    """An appending descriptor on `path` if it is still the file `expected` names, else None."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return None
    if identity(fd) != expected:
        os.close(fd)
        return None
    return fd


def append_from(fd: int) -> None:
    """Make an already open descriptor write at the end, as the other writers do."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


def appender(fd: int) -> BinaryIO:
    """A writer for whole rows, one `write` per row, appending to `fd` in blocks.

    CPython's BufferedWriter writes its buffer out whole before a `write` that does not
    fit (and a write larger than the buffer right after it, in one call), so each of its
    writes to the file ends on a row; `tests/test_shared_file.py` holds it to that.
    """
    return open(os.dup(fd), "ab", buffering=BLOCK)


class TailHasher(threading.Thread):
    """The sha256 of a file that others are still appending to, read from behind them."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True, name="backup-tail-hasher")
        self._fd, self.sha256, self.size = fd, hashlib.sha256(), 0
        self._writers_done, self._abandoned = threading.Event(), threading.Event()
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            while not self._abandoned.is_set():
                last_pass = self._writers_done.is_set()
                block = os.pread(self._fd, BLOCK, self.size)
                if block:
                    self.sha256.update(block)
                    self.size += len(block)
                elif last_pass:
                    return
                else:
                    self._writers_done.wait(0.01)
        except OSError as exc:
            self.error = exc

    def finish(self) -> hashlib._Hash:
        """Call once every writer's last block is written: the whole file's sha256."""
        self._writers_done.set()
        self.join()
        if self.error is not None:
            raise self.error
        return self.sha256

    def stop(self) -> None:
        """Give up (the backup failed): end the thread without reading the rest."""
        self._abandoned.set()
        self._writers_done.set()
        self.join()
