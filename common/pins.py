"""Pinned backup sets: those retention never removes, whatever its rules say.

A pin is a small file beside the set's manifest, `pin_<timestamp>.json`
(`{"pinned_at", "reason"}`), written whole by the storage's writer. It is a file of its
own because a manifest is signed and never rewritten, and a file works alike in a
directory and in object storage.

A backup directory is hostile input, so a pin file is only ever shown, never trusted
further, and its presence alone pins the set: one that is too large, not JSON, of the
wrong shape or not a regular file still keeps the set (with `problem` saying why it
could not be read). A damaged pin errs on the side of keeping a backup.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any, TypedDict

from common.exceptions import ConfigurationError, StorageError, VerifyError
from common.manifest import manifest_name

PIN_PREFIX, PIN_SUFFIX = "pin_", ".json"
PIN_GLOB = f"{PIN_PREFIX}*{PIN_SUFFIX}"
# A pin holds a time and a line of text: anything larger was not written by `pin`.
MAX_PIN_BYTES = 4096
MAX_REASON_CHARS = 500
MAX_TIME_CHARS = 40


class Pin(TypedDict):
    pinned_at: str | None
    reason: str | None
    problem: str | None  # why the pin file could not be read; the set is pinned all the same


def pin_name(timestamp: str) -> str:
    return f"{PIN_PREFIX}{timestamp}{PIN_SUFFIX}"


def pin(storage: Any, timestamp: str, reason: str | None = None) -> Pin:
    """Pin the set `manifest_<timestamp>.json` of `storage` (an earlier pin is replaced);
    `VerifyError` if the storage holds no such set, `ConfigurationError` for a reason
    that is not one printable line of at most 500 characters."""
    if reason is not None and not _text(reason, MAX_REASON_CHARS):
        raise ConfigurationError(
            f"a pin's reason must be one printable line of at most {MAX_REASON_CHARS} characters"
        )
    manifest = manifest_name(timestamp)
    if storage.stat(manifest) is None:
        raise VerifyError(f"no backup set {timestamp} in {storage.location} (no {manifest}); nothing pinned")
    done = Pin(pinned_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason=reason, problem=None)
    body = {"pinned_at": done["pinned_at"], "reason": reason}
    with storage.writer(pin_name(timestamp), replace=True) as out:
        out.write(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    if storage.stat(manifest) is None:
        # Retention removed the set while the pin was written: a pin of nothing helps nobody.
        storage.delete(pin_name(timestamp))
        raise VerifyError(f"{storage.location}: backup set {timestamp} was removed while it was pinned")
    return done


def unpin(storage: Any, timestamp: str) -> bool:
    """Remove the set's pin, so retention's rules apply to it again; whether there was one.
    Works whether or not the set still exists."""
    name = pin_name(timestamp)
    present = is_pinned(storage, timestamp)
    if present:
        storage.delete(name)
    return present


def is_pinned(storage: Any, timestamp: str) -> bool:
    """Whether anything is stored under the set's pin name: one look-up. A storage that
    cannot be read raises `StorageError` (nothing is known, so nothing may be removed)."""
    try:
        return storage.stat(pin_name(timestamp)) is not None
    except StorageError:
        raise
    except OSError:
        return True  # a link or a directory under the pin's name: present, so pinned


def read_pin(storage: Any, timestamp: str) -> Pin | None:
    """The set's pin as its file says, or None when it is not pinned."""
    name = pin_name(timestamp)
    try:
        with storage.open(name) as raw, io.BufferedReader(raw) as buffered:
            data = buffered.read(MAX_PIN_BYTES + 1)
    except FileNotFoundError:
        return None
    except StorageError:
        raise
    except OSError as exc:  # a link, a directory, unreadable: it is there, so the set is pinned
        return _damaged(f"{name} cannot be read ({type(exc).__name__})")
    if len(data) > MAX_PIN_BYTES:
        return _damaged(f"{name} is larger than {MAX_PIN_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError: bad UTF-8 or JSON
        return _damaged(f"{name} is not JSON")
    if not isinstance(body, dict):
        return _damaged(f"{name} is not a JSON object")
    pinned_at, reason = body.get("pinned_at"), body.get("reason")
    if not _text(pinned_at, MAX_TIME_CHARS) or not (reason is None or _text(reason, MAX_REASON_CHARS)):
        return _damaged(f"{name}: pinned_at or reason missing or malformed")
    return Pin(pinned_at=pinned_at, reason=reason, problem=None)


def _damaged(problem: str) -> Pin:
    return Pin(pinned_at=None, reason=None, problem=f"{problem}; the set stays pinned")


def _text(value: object, limit: int) -> bool:
    """One printable line: a reason is shown in terminals and JSON, never with controls."""
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()
