"""A backup directory on a local (or mounted) filesystem."""

from __future__ import annotations

import contextlib
import glob
import os
import stat as stat_mode
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from common.atomic import atomic_output
from common.storage import FileInfo, UnsafeFile, plain_name


class LocalDirectory:
    def __init__(self, root: Path, temp_suffix: str = ".tmp") -> None:
        self.root, self.temp_suffix = Path(root), temp_suffix

    def __repr__(self) -> str:
        return f"LocalDirectory({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def local_root(self) -> Path:
        return self.root

    def path(self, name: str) -> Path:
        return self.root / plain_name(name)

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def writer(self, name: str, replace: bool = False) -> Iterator[BinaryIO]:
        """`common.atomic`: temp file, fsync, rename, fsync of the directory."""
        path = self.path(name)
        self.prepare()
        with atomic_output(path, self.temp_suffix, replace=replace) as out:
            yield out

    def open(self, name: str) -> BinaryIO:
        """Opened without following a link, then checked: the bytes read are those of
        the regular file that was there when it was opened, however the directory changes."""
        fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeFile(f"{name} is not a regular file")
        return os.fdopen(fd, "rb", buffering=0)

    def stat(self, name: str) -> FileInfo | None:
        try:
            st = os.lstat(self.path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat_mode.S_ISLNK(st.st_mode):
            raise UnsafeFile(f"{name} is a symbolic link, which is never followed")
        if not stat_mode.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{name} is not a regular file")
        return FileInfo(st.st_size, st.st_mtime)

    def opened_info(self, opened: BinaryIO) -> FileInfo:
        st = os.fstat(opened.fileno())
        return FileInfo(st.st_size, st.st_mtime)

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def names(self, pattern: str = "*") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.glob(pattern) if p.is_file() and not p.is_symlink())

    def directories(self) -> list[str]:
        """The subdirectories' names; a symbolic link is never followed."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())

    def present(self) -> bool:
        return self.root.is_dir() and not self.root.is_symlink()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def pending(self, pattern: str = "*") -> list[str]:
        """Names matching `pattern` being written right now (their temp files exist)."""
        cut = len(self.temp_suffix)
        return [n[:-cut] for n in self.names(pattern + glob.escape(self.temp_suffix))]

    def idle(self, pattern: str = "*") -> dict[str, float]:
        """Each name being written and the seconds since its temp file was last written."""
        found = {}
        for name in self.pending(pattern):
            info = self.stat(name + self.temp_suffix)
            if info is not None:
                found[name] = time.time() - info.mtime
        return found

    def discard_pending(self, pattern: str = "*", older_than_s: float = 0.0) -> list[str]:
        """Remove the temp files of names matching `pattern` last written more than
        `older_than_s` ago; the names."""
        done = []
        for name in self.pending(pattern):
            info = self.stat(name + self.temp_suffix)
            if info is not None and time.time() - info.mtime >= older_than_s:
                self.delete(name + self.temp_suffix)
                done.append(name)
        return done

    def append_text(self, name: str, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with open(fd, "a", encoding="utf-8") as log:
            log.write(text)


def open_location(location: str, temp_suffix: str = ".tmp") -> LocalDirectory:
    return LocalDirectory(Path(location), temp_suffix)
