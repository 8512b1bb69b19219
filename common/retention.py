"""Retention: which backup sets of one directory to remove, and removing them.

A set is kept when it is pinned (`common.pins`), or among the newest `keep` sets, or
younger than `max_age_days` (each rule off at 0), or it is the newest set that verifies,
or a run may still be using it, or one of its files is being written. Everything else is
removed, manifest first, so a set interrupted half-way is never mistaken for a complete
one. A pin is not one of the set's files: it stays with the set it keeps.

Uploads idle for more than `pending_upload_max_age_s` (multipart uploads in object
storage, temp files in a directory) are of runs that died or could not abort them: they
are aborted first, so they are neither billed forever nor keep their set from expiring.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.exceptions import VerifyError
from common.manifest import MANIFEST_GLOB, SetRef, load_manifest, manifest_timestamp, verify_set
from common.pins import is_pinned
from common.storage import as_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep: int = 7
    max_age_days: float = 0.0
    pending_upload_max_age_s: float | None = None  # None: pending uploads are left alone


@dataclass(frozen=True)
class SetOnDisk:
    timestamp: str
    ref: SetRef
    created: float


def sets_in(storage: Any) -> list[SetOnDisk]:
    """The storage's sets (those with a manifest), newest first."""
    found = []
    for name in storage.names(MANIFEST_GLOB):
        info = storage.stat(name)
        if info is not None:
            found.append(SetOnDisk(manifest_timestamp(name), SetRef(storage, name), info.mtime))
    return sorted(found, key=lambda s: (s.created, s.timestamp), reverse=True)


def sets_to_remove(
    directory: Any,
    policy: RetentionPolicy,
    in_use: Callable[[str], bool],
    now: float | None = None,
    signing_key: str | None = None,
) -> list[SetOnDisk]:
    now = time.time() if now is None else now
    storage = as_storage(directory)
    sets = sets_in(storage)
    keep = {s.timestamp for s in sets[: policy.keep]} if policy.keep > 0 else set()
    if policy.max_age_days > 0:
        keep |= {s.timestamp for s in sets if now - s.created < policy.max_age_days * 86400}
    newest_good = next((s for s in sets if _verifies(s.ref, signing_key)), None)
    if newest_good is not None:
        keep.add(newest_good.timestamp)
    return [
        s
        for s in sets
        if s.timestamp not in keep and not in_use(s.timestamp) and not _kept_pinned(storage, s.timestamp)
    ]


def apply_retention(
    directory: Any,
    policy: RetentionPolicy,
    in_use: Callable[[str], bool],
    temp_suffix: str = ".tmp",
    signing_key: str | None = None,
) -> list[str]:
    """Remove the sets the policy lets go from `directory` (a storage, or a local path);
    returns their timestamps, each one logged.

    The log goes to the worker's logger, not the set log, whose blocks a run in progress
    may still be finishing."""
    storage = as_storage(directory, temp_suffix)
    if policy.pending_upload_max_age_s is not None:
        abort_stale_uploads(storage, policy.pending_upload_max_age_s)
    removed = []
    for old in sets_to_remove(storage, policy, in_use, signing_key=signing_key):
        if storage.pending(f"*_{glob.escape(old.timestamp)}.*"):
            continue  # something is being written for this set right now (a file, or its pin)
        if _kept_pinned(storage, old.timestamp):
            continue  # pinned since it was judged: verifying the sets may have taken minutes
        files = _files_of(old.ref)
        storage.delete(old.ref.manifest)
        for name in files:
            storage.delete(name)
        removed.append(old.timestamp)
        log.info(
            "retention removed backup set %s from %s (%s)", old.timestamp, storage.location, ", ".join(files)
        )
    return removed


def abort_stale_uploads(storage: Any, max_age_s: float) -> list[str]:
    """Abort the uploads (remove the temp files) of `storage` idle for more than
    `max_age_s`; their names, logged."""
    aborted = storage.discard_pending("*", older_than_s=max_age_s)
    if aborted:
        log.warning(
            "retention aborted %d upload(s) idle for more than %g s in %s (%s)",
            len(aborted),
            max_age_s,
            storage.location,
            ", ".join(aborted),
        )
    return aborted


def _kept_pinned(storage: Any, timestamp: str) -> bool:
    """Whether the set is pinned, logged when it is: the pin is all that keeps it."""
    if not is_pinned(storage, timestamp):
        return False
    log.info("retention kept backup set %s in %s: it is pinned", timestamp, storage.location)
    return True


def _files_of(ref: SetRef) -> list[str]:
    """The files a set's manifest lists that bear the set's own timestamp: a manifest
    rewritten to list another set's files gets none of them removed."""
    try:
        tables = load_manifest(ref)["tables"]
    except VerifyError:
        return []
    names = [str(e.get("file")) for e in tables.values()]
    stamp = f"_{ref.timestamp}"
    return [n for n in names if Path(n).name == n and n.split(".", 1)[0].endswith(stamp)]


def _verifies(ref: SetRef, signing_key: str | None) -> bool:
    try:
        verify_set(ref, deep=False, signing_key=signing_key)
    except VerifyError:
        return False
    return True
