"""A backup directory in S3-compatible object storage: `s3://bucket/prefix`.

Keys mirror the local layout: the directory `s3://bucket/root/<task_id>/vector_bak`
holds `s3://bucket/root/<task_id>/vector_bak/{table}_{timestamp}.csv`, the manifest
and `vector_backup_log.txt`. Files are written by streamed multipart uploads
(`s3_upload`), read as streams (resumed where a connection drops), and the set log is
appended to with conditional writes, so runs sharing a directory never lose a block.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import random
import re
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from common.exceptions import ConfigurationError, StorageError
from common.storage import FileInfo, plain_name
from common.storage.s3_client import (
    BOTO_ERRORS,
    S3Options,
    error_code,
    is_conflict,
    is_missing,
    s3_client,
    storage_error,
)
from common.storage.s3_upload import MultipartWriter, Upload

BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
# A prefix segment: what task ids, directory names and file names are made of.
SEGMENT = re.compile(r"[A-Za-z0-9_.\-~]{1,200}")
WILDCARD = re.compile(r"[*?\[]")
READ_ATTEMPTS = 4
APPEND_ATTEMPTS = 30


def split_url(location: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → ("bucket", "a/b"): plain segments only, so no key built from a
    location can reach outside its prefix."""
    rest = location[len("s3://") :].strip("/")
    bucket, _, prefix = rest.partition("/")
    # Never echo the URL: a mistaken one may carry a key (`s3://KEY:SECRET@bucket`) or a token.
    if not BUCKET.fullmatch(bucket):
        raise ConfigurationError("an s3:// location must be s3://bucket/prefix with a valid bucket name")
    segments = [s for s in prefix.split("/") if s]
    if any(not SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise ConfigurationError(
            f"s3://{bucket}/…: the prefix may hold only plain names (letters, digits, _ . - ~)"
        )
    return bucket, "/".join(segments)


class S3Reader(io.RawIOBase):
    """An object's bytes as a stream; a dropped connection resumes from the byte it
    reached, and only while the object is the one first opened (its ETag)."""

    def __init__(self, storage: S3Prefix, name: str) -> None:
        super().__init__()
        self._storage, self._name, self._position = storage, name, 0
        answer = storage._get(name)
        self._etag = answer["ETag"]
        self._body = answer["Body"]
        self.info = FileInfo(answer["ContentLength"], answer["LastModified"].timestamp())

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        for attempt in range(READ_ATTEMPTS):
            try:
                n = self._body.readinto(buffer)
                self._position += n
                return n
            except (*BOTO_ERRORS, OSError) as exc:
                if attempt + 1 == READ_ATTEMPTS or self._position >= self.info.size:
                    raise storage_error(self._storage.location, f"reading {self._name}", exc) from None
                time.sleep(0.2 * 2**attempt)
                self._body.close()
                extra = {"Range": f"bytes={self._position}-", "IfMatch": self._etag}
                self._body = self._storage._get(self._name, **extra)["Body"]
        return 0

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Prefix:
    """The storage interface of `common.storage` over one prefix of one bucket."""

    def __init__(
        self, bucket: str, prefix: str, temp_suffix: str = ".tmp", options: S3Options | None = None
    ) -> None:
        self.bucket, self.prefix, self.temp_suffix = bucket, prefix, temp_suffix
        self.options = options or S3Options.from_env()
        self.client = s3_client(self.options)

    def __repr__(self) -> str:
        return f"S3Prefix({self.location!r})"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def local_root(self) -> None:
        return None

    def key(self, name: str) -> str:
        return f"{self.prefix}/{plain_name(name)}" if self.prefix else plain_name(name)

    def child(self, name: str) -> S3Prefix:
        return S3Prefix(self.bucket, self.key(name), self.temp_suffix, self.options)

    def _call(self, doing: str, method: str, **kwargs) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except BOTO_ERRORS as exc:
            raise storage_error(self.location, doing, exc) from None

    def prepare(self) -> None:
        """Nothing to create; the bucket is checked, so a wrong name or credential fails
        before a table is read."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except BOTO_ERRORS as exc:
            raise self._head_error("opening the bucket", exc) from None

    def _head_error(self, doing: str, exc: Exception) -> StorageError:
        """A HEAD's error has no body, so a bare 403 cannot say why: ask once more with a
        request whose answer names the cause (a wrong secret, an unknown key, a denial)."""
        if error_code(exc) in ("400", "403"):
            try:
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/", MaxKeys=1)
            except BOTO_ERRORS as named:
                if error_code(named) not in ("", "400", "403"):
                    exc = named
        return storage_error(self.location, doing, exc)

    def upload(self, name: str, upload_id: str | None = None) -> Upload:
        return Upload(self.client, self.bucket, self.key(name), self.location, upload_id)

    @contextlib.contextmanager
    def writer(self, name: str, replace: bool = False) -> Iterator[BinaryIO]:
        if not replace and self.exists(name):
            raise FileExistsError(f"{name} already exists; refusing to overwrite a backup")
        out = MultipartWriter(self.upload(name), self.options.part_size, self.options.uploads, replace)
        try:
            yield out
            out.finish()
        except BaseException:
            out.abort()
            raise

    def _get(self, name: str, **extra) -> dict[str, Any]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name), **extra)
        except BOTO_ERRORS as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"{name} is missing") from None
            raise storage_error(self.location, f"reading {name}", exc) from None

    def open(self, name: str) -> BinaryIO:
        return S3Reader(self, name)

    def stat(self, name: str) -> FileInfo | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except BOTO_ERRORS as exc:
            if is_missing(exc):
                return None
            raise self._head_error(f"looking up {name}", exc) from None
        return FileInfo(answer["ContentLength"], answer["LastModified"].timestamp())

    def opened_info(self, opened: S3Reader) -> FileInfo:
        return opened.info

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def _listing(self, literal: str) -> Iterator[dict[str, Any]]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=base + literal, Delimiter="/")
        except BOTO_ERRORS as exc:
            raise storage_error(self.location, "listing", exc) from None

    def names(self, pattern: str = "*") -> list[str]:
        """The objects directly under the prefix whose names match the glob `pattern`."""
        literal = WILDCARD.split(pattern, 1)[0]
        found = []
        for page in self._listing(literal):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if fnmatch.fnmatchcase(name, pattern):
                    found.append(name)
        return sorted(found)

    def directories(self) -> list[str]:
        """The names of the prefixes directly under this one (a local root's subdirectories)."""
        found = []
        for page in self._listing(""):
            found += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
        return sorted(found)

    def present(self) -> bool:
        """Whether anything is stored under the prefix (what a directory's existence is)."""
        base = f"{self.prefix}/" if self.prefix else ""
        answer = self._call("listing", "list_objects_v2", Prefix=base, MaxKeys=1)
        return answer.get("KeyCount", 0) > 0

    def delete(self, name: str) -> None:
        self._call(f"deleting {name}", "delete_object", Key=self.key(name))

    def _pending_uploads(self, pattern: str) -> Iterator[dict[str, Any]]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + WILDCARD.split(pattern, 1)[0]):
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(base) :]
                    # A key no writer of ours makes (empty, `..`) is another tool's: left alone.
                    if "/" not in name and name not in ("", ".", "..") and fnmatch.fnmatchcase(name, pattern):
                        yield upload
        except BOTO_ERRORS as exc:
            raise storage_error(self.location, "listing uploads", exc) from None

    def pending(self, pattern: str = "*") -> list[str]:
        """Names matching `pattern` being written right now (multipart uploads in progress)."""
        return sorted({u["Key"].rsplit("/", 1)[-1] for u in self._pending_uploads(pattern)})

    def discard_pending(self, pattern: str = "*", older_than_s: float = 0.0) -> list[str]:
        """Abort the uploads in progress of names matching `pattern` idle for more than
        `older_than_s` (no part sent since, as a temp file's mtime for a directory); the names."""
        now, done = time.time(), set()
        for upload in list(self._pending_uploads(pattern)):
            if now - upload["Initiated"].timestamp() < older_than_s:
                continue
            if older_than_s > 0:
                # A long upload that still sends parts is alive, however long ago it began.
                last = self._last_active(upload)
                if last is None or now - last < older_than_s:
                    continue
            name = upload["Key"].rsplit("/", 1)[-1]
            self.upload(name, upload["UploadId"]).abort()
            done.add(name)
        return sorted(done)

    def idle(self, pattern: str = "*") -> dict[str, float]:
        """Each name being uploaded and the seconds since its upload last moved."""
        found, now = {}, time.time()
        for upload in list(self._pending_uploads(pattern)):
            last = self._last_active(upload)
            if last is not None:
                name = upload["Key"].rsplit("/", 1)[-1]
                found[name] = min(found.get(name, now - last), now - last)
        return found

    def _last_active(self, upload: dict[str, Any]) -> float | None:
        """When the upload last moved: its newest part, else its start (a date moto, for
        one, makes up); None if it has ended meanwhile."""
        latest = upload["Initiated"].timestamp()
        paginator = self.client.get_paginator("list_parts")
        which = {"Bucket": self.bucket, "Key": upload["Key"], "UploadId": upload["UploadId"]}
        try:
            for page in paginator.paginate(**which):
                latest = max([latest, *(p["LastModified"].timestamp() for p in page.get("Parts", []))])
        except BOTO_ERRORS as exc:
            if error_code(exc) == "NoSuchUpload":
                return None
            raise storage_error(self.location, "listing an upload's parts", exc) from None
        return latest

    def append_text(self, name: str, text: str) -> None:
        """Append to a text object shared by several writers: read it, write it back only
        if nobody changed it meanwhile (If-Match), else read again."""
        for attempt in range(APPEND_ATTEMPTS):
            try:
                answer = self._get(name)
                current, condition = answer["Body"].read(), {"IfMatch": answer["ETag"]}
            except FileNotFoundError:
                current, condition = b"", {"IfNoneMatch": "*"}
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.key(name), Body=current + text.encode("utf-8"), **condition
                )
                return
            except BOTO_ERRORS as exc:
                if not is_conflict(exc):
                    raise storage_error(self.location, f"appending to {name}", exc) from None
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise StorageError(
            f"{self.location}: {name} kept changing; {APPEND_ATTEMPTS} attempts to append failed"
        )


def open_location(location: str, temp_suffix: str = ".tmp") -> S3Prefix:
    return S3Prefix(*split_url(location), temp_suffix)
