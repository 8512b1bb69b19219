"""`GET /metrics` on the API process: Prometheus text, read at each scrape from what the
service already keeps — the sets' manifests, the runs' records in Redis, the last
`check` — so the numbers are the runs' own, whichever process made them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from common import run_keys
from common.catalog import find_set, list_sets
from common.config import Settings
from common.drill import last_drill
from common.exceptions import VectorBackupError
from common.redis_conn import redis_client, run_states

PREFIX = "vector_backup"
# Runs are kept in Redis for VECTOR_CLAIM_TTL; these count the ones still recorded.
RECENT_RUNS = 1000


class BackupCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._sets()
        yield from self._runs()
        yield from self._check()
        yield from self._drill()

    def _sets(self) -> Iterator[GaugeMetricFamily]:
        last = GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "When the newest backup set of a directory was written (its manifest's creation).",
            labels=["directory"],
        )
        tables = {
            name: GaugeMetricFamily(f"{PREFIX}_last_{name}", text, labels=["directory", "table"])
            for name, text in (
                ("rows", "Rows of each table in the newest set of a directory."),
                ("bytes", "Bytes of each table's file in the newest set of a directory."),
                ("duration_seconds", "How long each table's backup took in the newest set of a directory."),
            )
        }
        newest: dict[str, dict[str, Any]] = {}
        for found in list_sets(self.settings):  # newest first
            newest.setdefault(found["task_id"] or "", found)
        for directory, found in sorted(newest.items()):
            label = directory or "vector_bak"
            try:
                ref, manifest = find_set(self.settings, found["set"])
                created = ref.storage.stat(ref.manifest)
            except VectorBackupError:
                continue
            if created is not None:
                last.add_metric([label], created.mtime)
            for table, entry in manifest["tables"].items():
                for name, key in (("rows", "rows"), ("bytes", "bytes"), ("duration_seconds", "duration")):
                    if isinstance(entry.get(key), (int, float)):
                        tables[name].add_metric([label, table], float(entry[key]))
        yield last
        yield from tables.values()

    def _runs(self) -> Iterator[GaugeMetricFamily]:
        runs = run_states(self.settings).recent(RECENT_RUNS)
        states = GaugeMetricFamily(
            f"{PREFIX}_runs", "Runs still recorded (VECTOR_CLAIM_TTL), by state.", labels=["state"]
        )
        for state, count in sorted(Counter(r.get("state", "unknown") for r in runs).items()):
            states.add_metric([state], count)
        truncates = GaugeMetricFamily(
            f"{PREFIX}_truncates",
            "Runs still recorded that asked for a truncate, by state.",
            labels=["state"],
        )
        for state, count in sorted(
            Counter(r.get("state", "unknown") for r in runs if r.get("truncate")).items()
        ):
            truncates.add_metric([state], count)
        yield states
        yield truncates

    def _check(self) -> Iterator[GaugeMetricFamily]:
        raw = redis_client(self.settings.runs.redis_url).get(run_keys.LAST_CHECK)
        if raw is None:
            return
        last = json.loads(raw)
        yield GaugeMetricFamily(
            f"{PREFIX}_check_status",
            "The last `check`'s exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
            value=last["code"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_check_timestamp_seconds", "When the last `check` ran.", value=last["at"]
        )

    def _drill(self) -> Iterator[GaugeMetricFamily]:
        last = last_drill(redis_client(self.settings.runs.redis_url))
        if last is None:
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_drill_success",
            "1 if the last restore drill passed, else 0.",
            value=last["state"] == "passed",
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_drill_duration_seconds",
            "How long the last restore drill took.",
            value=last["duration"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_drill_timestamp_seconds", "When the last drill ended.", value=last["at"]
        )


def registry(settings: Settings) -> CollectorRegistry:
    """A registry of this service's metrics only (no process metrics of the API itself)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(BackupCollector(settings))
    return found
