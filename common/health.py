"""`check`: is the backup service healthy, and is there a recent set that verifies?

Each check is a plain function returning a `Check` with a Nagios status (0 OK, 1
WARNING, 2 CRITICAL, 3 UNKNOWN), as Barman's `check` and pgBackRest's Nagios plugin
report: nightly backups fail silently until the day they are needed, so the check that
matters most is the age of the newest set that *verifies*, not of the newest set.
`worker/check.py` gathers what needs Celery (worker pings, beat's schedule).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from common.db import connect
from common.exceptions import VectorBackupError, VerifyError
from common.manifest import load_manifest, verify_set
from common.pins import is_pinned
from common.retention import sets_in

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# A temp file or upload idle this long belongs to no live writer (writers send a part or
# a block every few seconds).
STALE_PENDING_S = 3600.0


@dataclass(frozen=True)
class Check:
    name: str
    status: int
    summary: str

    def line(self) -> str:
        return f"{NAMES[self.status]}: {self.name}: {self.summary}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": NAMES[self.status]}


def overall(checks: Iterable[Check]) -> int:
    """The exit code: CRITICAL before WARNING before UNKNOWN before OK."""
    statuses = {c.status for c in checks}
    for status in (CRITICAL, WARNING, UNKNOWN):
        if status in statuses:
            return status
    return OK


def database(settings: Any) -> Check:
    target = settings.database
    try:
        connect(target).close()
    except VectorBackupError as exc:
        return Check(
            "database", CRITICAL, f"{target.describe()} cannot be reached: {target.redact(str(exc))}"
        )
    return Check("database", OK, f"{target.describe()} reachable")


def newest_good_set(
    storage: Any, max_age_s: float, signing_key: str | None, now: float | None = None
) -> Check:
    """The age of the newest set that verifies (sizes, sha256s, the collection link)."""
    now = time.time() if now is None else now
    skipped = []
    for found in sets_in(storage):
        try:
            verify_set(found.ref, deep=False, signing_key=signing_key)
        except VerifyError:
            skipped.append(found.timestamp)
            continue
        age = now - found.created
        note = f" (newer sets that do not verify: {', '.join(skipped)})" if skipped else ""
        status = OK if age <= max_age_s else CRITICAL
        summary = f"newest set that verifies is {found.timestamp}, {_hours(age)} old"
        summary += f" (max {_hours(max_age_s)}){note}"
        return Check("newest set", status if not skipped else max(status, WARNING), summary)
    if skipped:
        return Check("newest set", CRITICAL, f"no set in {storage.location} verifies ({', '.join(skipped)})")
    return Check("newest set", CRITICAL, f"no backup set in {storage.location}")


def free_space(storage: Any) -> Check:
    """Room for one more set as large as the newest, where the storage has a size."""
    root = storage.local_root
    if root is None:
        return Check("free space", OK, f"{storage.location} is object storage, without a fixed size")
    need = _newest_set_bytes(storage)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    summary = f"{_size(free)} free in {root}, the newest set is {_size(need)}"
    if free < need:
        return Check("free space", CRITICAL, summary)
    return Check("free space", WARNING if free < 2 * need else OK, summary)


def leftovers(storage: Any, stale_s: float = STALE_PENDING_S) -> Check:
    """Temp files or pending uploads nobody has written to for `stale_s`: a dead writer's."""
    stale = sorted(name for name, idle in storage.idle("*").items() if idle >= stale_s)
    if stale:
        return Check(
            "leftovers",
            WARNING,
            f"{len(stale)} unfinished file(s) in {storage.location}: {', '.join(stale[:5])}",
        )
    return Check("leftovers", OK, f"no unfinished file in {storage.location}")


def pins(storage: Any) -> Check:
    """The pinned sets, which retention never removes (informational)."""
    pinned = [found.timestamp for found in sets_in(storage) if is_pinned(storage, found.timestamp)]
    if not pinned:
        return Check("pins", OK, f"no set is pinned in {storage.location}")
    return Check("pins", OK, f"{len(pinned)} pinned, kept by retention: {', '.join(pinned[:10])}")


def _newest_set_bytes(storage: Any) -> int:
    for found in sets_in(storage):
        try:
            return sum(int(e.get("bytes", 0)) for e in load_manifest(found.ref)["tables"].values())
        except VerifyError:
            continue
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"
