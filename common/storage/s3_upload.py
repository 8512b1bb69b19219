"""Streamed multipart upload: an object is visible whole, or not at all.

S3 allows 10,000 parts per object, each at least 5 MiB but the last. A writer that
keeps one part size caps the object at 10,000 times that size (8 MiB parts break near 80
GB, a known failure of other tools), and a compressed stream's size is not known in
advance. So part sizes grow: the first 1,000 parts have the configured size, each
following thousand twice the size of the one before, and the last thousand S3's largest
(5 GiB), so even 5 MiB first parts pass S3's 5 TiB object limit; memory stays at a few
parts. Parts are cut at exactly their size, whatever the writes, and go out on `uploads`
threads while the next one fills; the first part that fails stops the upload: nothing
more is sent, and the next write (or `finish`) raises its error.

The upload is completed only when the writer finishes without an error, and aborted on
any failure, so no partial object is ever visible. An abort that cannot reach the
storage leaves a pending upload (invisible, but billed); the run's close and retention
abort those (`S3Prefix.discard_pending`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from common.exceptions import StorageError
from common.storage.s3_client import BOTO_ERRORS, error_code, storage_error

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
GROW_EVERY = 1_000
MAX_PART_BYTES = 5 << 30


def part_size(first: int, number: int) -> int:
    """The size part `number` (from 1) is cut at."""
    if number > MAX_PARTS - GROW_EVERY:
        # Doubling alone leaves 5 MiB first parts at 4.9 TiB, short of S3's 5 TiB.
        return MAX_PART_BYTES
    return min(first << ((number - 1) // GROW_EVERY), MAX_PART_BYTES)


@dataclass(frozen=True)
class SentPart:
    number: int
    etag: str
    size: int
    sha256: str

    def completed(self) -> dict[str, Any]:
        return {"PartNumber": self.number, "ETag": self.etag}


class Upload:
    """One multipart upload of `key`: parts sent (from several processes, for range-split),
    then completed in part-number order, or aborted."""

    def __init__(
        self, client: Any, bucket: str, key: str, location: str, upload_id: str | None = None
    ) -> None:
        self.client, self.bucket, self.key, self.location = client, bucket, key, location
        self.upload_id = upload_id

    def start(self) -> str:
        try:
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
        except BOTO_ERRORS as exc:
            raise storage_error(self.location, "starting an upload", exc) from None
        self.upload_id = answer["UploadId"]
        return self.upload_id

    def send(self, number: int, data: bytes, hashed: bool = False) -> SentPart:
        """Upload part `number`; with `hashed`, its sha256 too (parts that others join)."""
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(f"{self.location}: more than {MAX_PARTS} parts")
        try:
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
            )
        except BOTO_ERRORS as exc:
            raise storage_error(self.location, f"uploading part {number}", exc) from None
        digest = hashlib.sha256(data).hexdigest() if hashed else ""
        return SentPart(number, answer["ETag"], len(data), digest)

    def complete(self, parts: list[SentPart], replace: bool) -> None:
        ordered = sorted(parts, key=lambda p: p.number)
        extra = {} if replace else {"IfNoneMatch": "*"}
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [p.completed() for p in ordered]},
                **extra,
            )
        except BOTO_ERRORS as exc:
            if not replace and error_code(exc) in ("PreconditionFailed", "412") and self._is_ours(ordered):
                return  # a retry of a completion that had succeeded: the object is these parts
            raise storage_error(self.location, "completing the upload", exc) from None

    def _is_ours(self, parts: list[SentPart]) -> bool:
        """Whether the object now under the key is this upload's: S3's ETag of a multipart
        object is the MD5 of its parts' MD5s, then `-` and their number."""
        try:
            etag = self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"].strip('"')
            digests = b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts)
        except (*BOTO_ERRORS, ValueError):
            return False
        return etag == f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"

    def abort(self) -> None:
        """Best effort: on failure the upload stays pending until a cleanup aborts it."""
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except BOTO_ERRORS as exc:
            if error_code(exc) == "NoSuchUpload":
                return  # aborted already (a cleanup came first)
            log.warning(
                "%s; the pending upload is aborted by the next cleanup",
                storage_error(self.location, "aborting an upload", exc),
            )


class MultipartWriter(io.RawIOBase):
    """A binary writer whose bytes become the object `key` when `finish` is called.

    A file smaller than the first part is sent in one PUT (also atomic). `replace=False`
    completes only if no object has the name meanwhile.
    """

    def __init__(self, upload: Upload, first_part: int, uploads: int, replace: bool) -> None:
        super().__init__()
        self.upload, self.first_part, self.replace = upload, first_part, replace
        self._buffer = bytearray()
        self._next = 1
        self._sent: list[Future] = []
        self._failure: BaseException | None = None  # the first part that failed
        self._slots = threading.Semaphore(uploads)
        self._pool = ThreadPoolExecutor(uploads, thread_name_prefix="s3-upload")
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._raise_failed()
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= (size := part_size(self.first_part, self._next)):
            self._cut(size)
        return len(data)

    def _cut(self, size: int) -> None:
        if self.upload.upload_id is None:
            self.upload.start()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        # At most `uploads` parts in flight: the writer waits here for a free slot.
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            self._raise_failed()
        number, self._next = self._next, self._next + 1
        future = self._pool.submit(self.upload.send, number, data)
        future.add_done_callback(self._part_done)
        self._sent.append(future)

    def _part_done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()
        self._slots.release()

    def _raise_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _first_failure(self) -> BaseException | None:
        # `wait` can return before a failed part's callback has recorded its error.
        failed = (f.exception() for f in self._sent if f.done() and not f.cancelled() and f.exception())
        return self._failure or next(failed, None)

    def finish(self) -> None:
        if self.upload.upload_id is None:
            self._pool.shutdown()
            self._put_whole()
            return
        if self._buffer:
            self._cut(len(self._buffer))
        # Returns at the first failure: parts still in flight are the abort's to wait for.
        wait(self._sent, return_when=FIRST_EXCEPTION)
        failure = self._first_failure()
        if failure is not None:
            raise failure
        self._pool.shutdown()
        self.upload.complete([future.result() for future in self._sent], self.replace)

    def _put_whole(self) -> None:
        up = self.upload
        extra = {} if self.replace else {"IfNoneMatch": "*"}
        try:
            up.client.put_object(Bucket=up.bucket, Key=up.key, Body=bytes(self._buffer), **extra)
        except BOTO_ERRORS as exc:
            raise storage_error(up.location, "writing the object", exc) from None

    def abort(self) -> None:
        for future in self._sent:
            future.cancel()
        # A part still being sent could land after an abort and be kept (S3 says so):
        # it ends first (each attempt is bounded by VECTOR_S3_TIMEOUT).
        self._pool.shutdown(wait=True)
        self.upload.abort()
