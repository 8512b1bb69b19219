"""How a table is split: block ranges, who copies which first, and the snapshot to share."""

from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import table_identifier

# Small ranges: the copiers finish within a range of each other, and the holder appends
# a helper's part while the helpers copy the next one.
CHUNKS_PER_WORKER = 16
# Appending a helper's part (read, sha256, write) costs the holder 0.3-0.7 of what
# copying the same rows costs (measured with `make bench`'s tables).
APPEND_COST = 0.4


@dataclass(frozen=True)
class SplitPlan:
    """What the holder publishes for the helpers of one attempt."""

    attempt: int
    snapshot: str | None  # pg_export_snapshot() of the holder's transaction
    ranges: list[tuple[int, int | None]]  # block ranges [start, end); the last open-ended
    helpers_from: int  # helpers start at this range; the holder copies those before it
    total_estimate: int | None
    file: list[int] | None = None  # (st_dev, st_ino) of the file copiers append to directly
    upload: str | None = None  # the multipart upload copiers send parts to (object storage)

    @property
    def chunks(self) -> int:
        return len(self.ranges)

    def query(self, table: str, chunk: int, fmt: Any) -> sql.Composed:
        return range_query(table, *self.ranges[chunk], fmt)

    def sharing(self, file: list[int]) -> SplitPlan:
        return dataclasses.replace(self, file=file)

    def uploading(self, upload: str) -> SplitPlan:
        return dataclasses.replace(self, upload=upload)

    def helper_order(self) -> list[int]:
        """The ranges a helper tries, its own share first."""
        return [*range(self.helpers_from, self.chunks), *range(1, self.helpers_from)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SplitPlan:
        data = json.loads(raw)
        data["ranges"] = [tuple(r) for r in data["ranges"]]
        return cls(**data)


def make_plan(
    conn: Connection, table: str, attempt: int, workers: int, min_bytes: int, copiers: int, direct: bool
) -> SplitPlan:
    """Export the snapshot and split `table` into `workers * CHUNKS_PER_WORKER` ranges, or
    one range when it is small, not a plain table, or missing (whose COPY then raises the
    usual clear error)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relkind, c.reltuples::bigint, pg_table_size(c.oid), "
            "pg_relation_size(c.oid) / current_setting('block_size')::int, pg_export_snapshot() "
            "FROM pg_class c WHERE c.oid = to_regclass(%s)",
            (table_identifier(table).as_string(conn),),
        )
        row = cur.fetchone()
    relkind, estimate, size, blocks, snapshot = row or ("", 0, 0, 0, None)
    chunks = workers * CHUNKS_PER_WORKER
    if relkind != "r" or size < min_bytes or blocks < chunks:
        chunks = 1
    share = max(1, chunks // copiers) if direct else holder_chunks(chunks, copiers)
    return SplitPlan(
        attempt=attempt,
        snapshot=snapshot,
        ranges=block_ranges(blocks, chunks),
        helpers_from=share if chunks > 1 else 1,
        total_estimate=estimate if estimate > 0 else None,
    )


def holder_chunks(chunks: int, workers: int) -> int:
    """How many of the first ranges the holder copies before helpers start on theirs.

    Besides its own ranges the holder appends every helper's part, so it takes a smaller
    share (3/8 with two workers) and the tasks finish together; whoever runs ahead
    claims the other's ranges anyway.
    """
    helpers = workers - 1
    share = max(0.0, (1 - APPEND_COST * helpers) / (workers - APPEND_COST * helpers))
    return min(chunks - 1, max(1, round(chunks * share)))


def block_ranges(blocks: int, chunks: int) -> list[tuple[int, int | None]]:
    """`chunks` ranges of block numbers [start, end); the last one is open-ended."""
    bounds = [blocks * i // chunks for i in range(chunks)]
    return [(start, bounds[i + 1] if i + 1 < chunks else None) for i, start in enumerate(bounds)]


def range_query(table: str, start: int, end: int | None, fmt: Any) -> sql.Composed:
    condition = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({start},0)"))
    if end is not None:
        condition = sql.SQL("{} AND ctid < {}::tid").format(condition, sql.Literal(f"({end},0)"))
    source = sql.SQL("(SELECT * FROM {} WHERE {})").format(table_identifier(table), condition)
    return fmt.copy_to(source, header=False)


def part_name(final: str, attempt: int, chunk: int, temp_suffix: str) -> str:
    # The attempt in the name: an earlier attempt's helper may still be writing its part.
    return f"{final}.part{attempt}-{chunk}{temp_suffix}"


def remove_parts(storage: Any, timestamp: str, temp_suffix: str) -> None:
    """Drop the part files a set's tasks left (a failed table, a presumed-dead helper)."""
    for leftover in storage.names(f"*_{glob.escape(timestamp)}.*.part*{glob.escape(temp_suffix)}"):
        storage.delete(leftover)
