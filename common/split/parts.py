"""Range-split on object storage: copiers on any host upload their rows as parts of the
table's one multipart upload, and the holder completes it.

S3 parts must be at least 5 MiB but the last, and a copier cannot know where its rows
will sit in the object, so every part is made to stand alone: it holds whole rows only
(libpq hands COPY's rows over one per `write`) and, compressed, whole frames (a zstd
frame or a gzip member per part; both formats read concatenated frames as one stream).
Parts of different copiers then join in any order, as rows of a local range-split file
do. Part numbers come from one Redis counter; part 1 is the holder's (the file's
header), the last number the holder's (its trailer). Part sizes grow with the numbers
handed out (`s3_upload.part_size`), so the 10,000-part limit holds across copiers.

A copier's rows left over at its end, too few for a part, go into a small object the
holder reads and adds to its own last part (`tail_name`). Nobody sees the whole file,
so its checksum is a hash list (`common.digest`): the manifest lists the parts' sizes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

import zstandard

from common.compression import GZIP_LEVEL, ZSTD_LEVEL
from common.digest import parts_hexdigest
from common.exceptions import BackupError
from common.storage.s3_client import MIN_PART_BYTES
from common.storage.s3_upload import SentPart, Upload, part_size


class HeadTooSmall(BackupError):
    """The holder's own rows came to less than the 5 MiB a first part needs beside the
    helpers' parts: the holder starts over and copies the table alone."""


class _Frame:
    """One part's bytes: rows as they are, or compressed into one frame of their own."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._chunks: list[bytes] = []
        self._compressor: Any = None
        self.size = 0  # bytes out so far (a compressor holds some back until the end)

    def write(self, data: bytes) -> None:
        if self.compression == "none":
            self._add(data)
            return
        if self._compressor is None:
            self._compressor = (
                zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
                if self.compression == "zstd"
                else zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip member
            )
        self._add(self._compressor.compress(data))

    def add_frames(self, data: bytes) -> None:
        """Bytes that are whole frames already (another copier's leftover rows)."""
        self._end_frame()
        self._add(data)

    def _add(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def _end_frame(self) -> None:
        if self._compressor is not None:
            self._add(self._compressor.flush())
            self._compressor = None

    def take(self) -> bytes:
        self._end_frame()
        data, self._chunks, self.size = b"".join(self._chunks), [], 0
        return data


class PartSink:
    """A copier's writer: whole rows in, standalone parts out, each sent on a thread as
    soon as it reaches the size its number calls for. `first` numbers the first part
    (the holder's 1); the rest come from `next_number`."""

    def __init__(
        self,
        upload: Upload,
        compression: str,
        first_part: int,
        next_number: Callable[[], int],
        first: int | None = None,
        uploads: int = 2,
    ) -> None:
        self.upload, self.first_part, self._next_number = upload, first_part, next_number
        self._first = first
        self._frame = _Frame(compression)
        self._target = part_size(first_part, first or 1)
        self._sent: list[Future] = []
        # At most `uploads` parts in flight: a COPY faster than the link waits, not memory.
        self._slots = threading.Semaphore(uploads)
        self._pool = ThreadPoolExecutor(uploads, thread_name_prefix="s3-part")
        self.whole = hashlib.sha256()  # of the parts in the order sent: their numbers' order

    def write(self, data: bytes) -> int:
        self._frame.write(data)
        if self._frame.size >= self._target:
            self.send(self.take())
        return len(data)

    def flush(self) -> None:
        pass

    def add_frames(self, data: bytes) -> None:
        self._frame.add_frames(data)

    @property
    def first_sent(self) -> bool:
        """Whether part `first` went out (the holder's header part)."""
        return self._first is None

    def take(self) -> bytes:
        """What is not sent yet, as whole frames; the sink starts empty again."""
        return self._frame.take()

    def send(self, data: bytes) -> None:
        number = self._first if self._first is not None else self._next_number()
        self._first = None
        self._target = part_size(self.first_part, number + 1)
        self._failed()
        self.whole.update(data)
        self._slots.acquire()
        future = self._pool.submit(self.upload.send, number, data, True)
        future.add_done_callback(lambda _: self._slots.release())
        self._sent.append(future)

    def _failed(self) -> None:
        for future in self._sent:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def sent(self) -> list[SentPart]:
        """Every part sent, once all are uploaded (the first upload error is raised)."""
        try:
            return [future.result() for future in self._sent]
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        for future in self._sent:
            future.cancel()
        self._pool.shutdown(wait=True)


def part_record(parts: list[SentPart]) -> list[list[Any]]:
    return [[p.number, p.etag, p.size, p.sha256] for p in parts]


def from_record(rows: list[list[Any]]) -> list[SentPart]:
    return [SentPart(int(n), str(etag), int(size), str(sha)) for n, etag, size, sha in rows]


def big_enough(data: bytes) -> bool:
    """Whether `data` may be a part that is not the object's last."""
    return len(data) >= MIN_PART_BYTES


class PartsDigest:
    """The checksum of a file completed from `parts`, as `backup_table` takes a file's:
    `hexdigest()`, and the sizes the manifest records. A file whose parts all came from
    the holder (its rows, and any helper's leftovers it added) was hashed whole as it was
    sent (`whole`); one with helpers' parts gets the hash list (`common.digest`)."""

    def __init__(self) -> None:
        self.parts: list[SentPart] = []
        self.whole: Any = None
        self.joined = False  # other copiers' rows are in the file (no CSV checksum here)

    def hexdigest(self) -> str:
        if self.whole is not None:
            return self.whole.hexdigest()
        return parts_hexdigest([p.sha256 for p in self.ordered])

    @property
    def ordered(self) -> list[SentPart]:
        return sorted(self.parts, key=lambda p: p.number)

    @property
    def part_sizes(self) -> list[int] | None:
        return None if self.whole is not None else [p.size for p in self.ordered]


class Uploading:
    """The holder's side: the upload, its own sink (part 1 first), the helpers' leftovers
    added to its last part, and the completion, only once every part is accounted for."""

    def __init__(self, board: Any, attempt: int, compression: str, first_part: int, uploads: int = 2) -> None:
        self.board, self.attempt, self.compression, self.first_part = board, attempt, compression, first_part
        self.uploads = uploads
        self.upload: Upload | None = None
        self.sink: PartSink | None = None
        self.storage: Any = None
        self.digest = PartsDigest()

    @property
    def upload_id(self) -> str:
        return self.upload.upload_id

    @contextlib.contextmanager
    def output(self, job: Any) -> Iterator[tuple[BinaryIO, Any]]:
        if not job.replace and job.storage.exists(job.file_name):
            raise FileExistsError(f"{job.file_name} already exists; refusing to overwrite a backup")
        self.storage, self.upload = job.storage, job.storage.upload(job.file_name)
        numbers = functools.partial(self.board.next_part, self.attempt)
        self.sink = PartSink(self.upload, self.compression, self.first_part, numbers, 1, self.uploads)
        try:
            self.board.note_upload(self.attempt, self.upload.start())
            self.board.number_parts_from(self.attempt, 1)
            yield self.sink, self.digest
            self.upload.complete(self.digest.parts, replace=job.replace)
        except BaseException:
            self.sink.abandon()
            self.upload.abort()
            raise

    def add_tail(self, name: str) -> None:
        """A helper's leftover rows (whole frames), into the holder's last part."""
        with self.storage.open(name) as raw:
            self.sink.add_frames(raw.read())
        self.storage.delete(name)

    def finish(self, writer: Any, helper_parts: list[SentPart], trailer: bytes) -> None:
        """Send what is left: part 1 if it has not gone yet, the trailer last."""
        sink = self.sink
        if not sink.first_sent and helper_parts:
            head = sink.take()
            if not big_enough(head):
                raise HeadTooSmall(f"the holder's first part is {len(head)} bytes, under S3's 5 MiB")
            sink.send(head)
        writer.frame(trailer)
        rest = sink.take()
        if rest or not sink.first_sent:
            sink.send(rest)
        self.digest.parts = [*sink.sent(), *helper_parts]
        if not helper_parts:
            self.digest.whole = sink.whole


def abort_again(board: Any, storage: Any, file_name: str) -> None:
    """Abort every attempt's upload of a table once all its copiers have ended: a part
    still in flight when the holder aborted may have landed after it (S3 then keeps it,
    invisible and billed, under an upload no listing shows). A completed upload is not
    touched (S3 answers NoSuchUpload)."""
    for upload_id in board.uploads().values():
        storage.upload(file_name, upload_id).abort()
