"""Optional streaming compression of backup files: `none` (the seeds' `.csv`), `zstd`
(`.csv.zst`) or `gzip` (`.csv.gz`).

The sha256 and the size in the manifest are those of the file on disk, so verify checks
them without decompressing; rows and headers are read through `decompressing`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from common.digest import FileDigest
from common.exceptions import ConfigurationError

SUFFIXES = {"none": "", "zstd": ".zst", "gzip": ".gz"}
# Speed first: a backup should still keep up with COPY (see `make bench`).
ZSTD_LEVEL, GZIP_LEVEL = 3, 1


def check(compression: str) -> str:
    if compression not in SUFFIXES:
        raise ConfigurationError(f"VECTOR_BACKUP_COMPRESSION must be one of {', '.join(SUFFIXES)}")
    return compression


def suffix(compression: str) -> str:
    return SUFFIXES[check(compression)]


def of_file(name: str) -> str:
    """The compression a backup file's name says it has."""
    return next((c for c, suffix in SUFFIXES.items() if suffix and name.endswith(suffix)), "none")


class _Hashing(io.RawIOBase):
    """Passes bytes through to `out` and hashes exactly what reaches the file."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self.sha256 = out, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._out.write(data)


@contextlib.contextmanager
def compressing(out: BinaryIO, compression: str) -> Iterator[tuple[BinaryIO, object | None]]:
    """Yield (a writer for the CSV bytes, the sha256 of the bytes that reach `out`).

    Uncompressed, the writer is `out` itself and the hash is None: the CSV bytes are
    the file's bytes, which the caller hashes anyway. The compressed stream is finished
    when the block ends without an error.
    """
    if compression == "none":
        yield out, None
        return
    hashing = _Hashing(out)
    if compression == "gzip":
        writer = gzip.GzipFile(fileobj=hashing, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
    else:
        writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(hashing, closefd=False)
    yield writer, hashing.sha256
    writer.close()


def decompressing(raw: BinaryIO, name: str) -> BinaryIO:
    """The rows' bytes of a backup file called `name`, read from `raw` and decompressed
    as they are read. Closing the result closes `raw`."""
    compression = of_file(name)
    buffered = io.BufferedReader(raw, 1 << 20) if isinstance(raw, io.RawIOBase) else raw
    if compression == "gzip":
        reader = gzip.GzipFile(fileobj=buffered, mode="rb")
        reader.myfileobj = buffered  # what GzipFile closes when it opened the file itself
        return reader
    if compression == "zstd":
        # A file joined from parts holds one frame per part.
        return zstandard.ZstdDecompressor().stream_reader(buffered, closefd=True, read_across_frames=True)
    return buffered


class HashingReader(io.RawIOBase):
    """A file read once: every byte read is hashed and counted, so what a reader used is
    exactly what was checked (`part_sizes`: a file uploaded in parts, `common.digest`)."""

    def __init__(self, raw: BinaryIO, part_sizes: list[int] | None = None) -> None:
        self._raw, self.sha256, self.size = raw, FileDigest(part_sizes), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer) or 0
        self.sha256.update(memoryview(buffer)[:n])
        self.size += n
        return n

    def finish(self) -> tuple[str, int]:
        """Read what is left; the sha256 and size of the whole file."""
        while self.read(1 << 20):
            pass
        return self.sha256.hexdigest(), self.size

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_checked(
    raw: BinaryIO, name: str, part_sizes: list[int] | None = None
) -> tuple[BinaryIO, HashingReader]:
    """`decompressing` the file `raw` through a `HashingReader` of the file itself: the
    bytes used are exactly the bytes hashed."""
    hashed = HashingReader(raw, part_sizes)
    return decompressing(hashed, name), hashed
