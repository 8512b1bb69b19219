"""Retention: which backup sets of one directory to remove, and removing them.

A set is kept when it is among the newest `keep` sets, or younger than `max_age_days`
(each rule off at 0), or it is the newest set that verifies, or a run may still be
using it. Everything else is removed, manifest first, so a set interrupted half-way
is never mistaken for a complete one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.exceptions import VerifyError
from common.manifest import MANIFEST_GLOB, load_manifest, manifest_timestamp, verify_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep: int = 7
    max_age_days: float = 0.0


@dataclass(frozen=True)
class SetOnDisk:
    timestamp: str
    manifest: Path
    created: float


def sets_in(directory: Path) -> list[SetOnDisk]:
    """The directory's sets (those with a manifest), newest first."""
    found = [SetOnDisk(manifest_timestamp(p), p, p.stat().st_mtime) for p in directory.glob(MANIFEST_GLOB)]
    return sorted(found, key=lambda s: (s.created, s.timestamp), reverse=True)


def sets_to_remove(
    directory: Path,
    policy: RetentionPolicy,
    in_use: Callable[[str], bool],
    now: float | None = None,
    signing_key: str | None = None,
) -> list[SetOnDisk]:
    now = time.time() if now is None else now
    sets = sets_in(directory)
    keep = {s.timestamp for s in sets[: policy.keep]} if policy.keep > 0 else set()
    if policy.max_age_days > 0:
        keep |= {s.timestamp for s in sets if now - s.created < policy.max_age_days * 86400}
    newest_good = next((s for s in sets if _verifies(s.manifest, signing_key)), None)
    if newest_good is not None:
        keep.add(newest_good.timestamp)
    return [s for s in sets if s.timestamp not in keep and not in_use(s.timestamp)]


def apply_retention(
    directory: Path,
    policy: RetentionPolicy,
    in_use: Callable[[str], bool],
    temp_suffix: str = ".tmp",
    signing_key: str | None = None,
) -> list[str]:
    """Remove the sets the policy lets go; returns their timestamps, each one logged.

    The log goes to the worker's logger, not the set log, whose blocks a run in progress
    may still be finishing."""
    removed = []
    for old in sets_to_remove(directory, policy, in_use, signing_key=signing_key):
        if any(directory.glob(f"*_{old.timestamp}.*{temp_suffix}")):
            continue  # something is being written for this set right now
        files = _files_of(old.manifest, old.timestamp)
        old.manifest.unlink()
        for name in files:
            (directory / name).unlink(missing_ok=True)
        removed.append(old.timestamp)
        log.info("retention removed backup set %s from %s (%s)", old.timestamp, directory, ", ".join(files))
    return removed


def _files_of(manifest: Path, timestamp: str) -> list[str]:
    """The files a set's manifest lists that bear the set's own timestamp: a manifest
    rewritten to list another set's files gets none of them removed."""
    try:
        tables = load_manifest(manifest)["tables"]
    except VerifyError:
        return []
    names = [str(e.get("file")) for e in tables.values()]
    return [n for n in names if Path(n).name == n and n.split(".", 1)[0].endswith(f"_{timestamp}")]


def _verifies(manifest: Path, signing_key: str | None) -> bool:
    try:
        verify_set(manifest, deep=False, signing_key=signing_key)
    except VerifyError:
        return False
    return True
