"""A backup file's checksum as the manifest records it.

A file written by one process is hashed whole: `sha256` is the file's sha256. A file
that copiers on several hosts uploaded as parts of one multipart upload (range-split on
object storage) was never seen whole by anyone, so its manifest entry also lists the
parts' sizes (`part_sizes`) and `sha256` is the sha256 of the parts' sha256 digests in
order: a changed byte changes its part's digest and so the whole, as with any hash list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_PARTS = 10_000


class FileDigest:
    """Fed the file's bytes in order; `hexdigest()` is what the manifest's `sha256` must be."""

    def __init__(self, part_sizes: Sequence[int] | None = None) -> None:
        self._sizes = list(part_sizes) if part_sizes else None
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._digests: list[bytes] = []
        self._left = self._sizes[0] if self._sizes else 0
        self.size = 0

    def update(self, data) -> None:
        self.size += len(data)
        if self._sizes is None:
            self._whole.update(data)
            return
        view = memoryview(data)
        while len(view):
            if self._left == 0 and len(self._digests) + 1 >= len(self._sizes):
                self._part.update(view)  # past the last part: the size check fails it
                return
            if self._left == 0:
                self._next_part()
            take = min(self._left, len(view))
            self._part.update(view[:take])
            self._left -= take
            view = view[take:]

    def _next_part(self) -> None:
        self._digests.append(self._part.digest())
        self._part = hashlib.sha256()
        self._left = self._sizes[len(self._digests)]

    def hexdigest(self) -> str:
        if self._sizes is None:
            return self._whole.hexdigest()
        digests = [*self._digests, self._part.digest()]
        return hashlib.sha256(b"".join(digests)).hexdigest()


def parts_hexdigest(part_digests: Sequence[str]) -> str:
    """The `sha256` of a file uploaded in parts, from its parts' hex digests in order."""
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in part_digests)).hexdigest()


def valid_part_sizes(sizes: object, total: int) -> bool:
    return (
        isinstance(sizes, list)
        and 0 < len(sizes) <= MAX_PARTS
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)
        and sum(sizes) == total
    )
