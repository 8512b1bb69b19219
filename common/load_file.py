"""Load one backup file into a table with COPY FROM, hashed as it is read and checked
against the manifest: by one COPY, or by several connections (`common.parallel_load`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.compression import open_checked
from common.db import opened, table_identifier
from common.exceptions import RestoreError
from common.formats import DEFAULT as DEFAULT_FORMAT
from common.formats import file_format
from common.manifest import SetRef
from common.parallel_load import PIECE, load_parallel

COPY_CHUNK = 1 << 20  # psycopg2 reads 8 KiB per call by default
# Below two pieces a file is one share anyway: one COPY, no extra connections.
PARALLEL_MIN_BYTES = 2 * PIECE


def check_types(cur, table: str, target: sql.Composable, columns: list[list[str]], fmt: Any) -> None:
    """A binary file holds each value in its column type's own representation: refuse a
    target whose columns have other types, before COPY would misread them."""
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (target.as_string(cur.connection),),
    )
    target = dict(cur.fetchall())
    differ = [
        f"{name} is {kind} in the backup but {target.get(name, 'missing')} here"
        for name, kind in columns
        if target.get(name) != kind
    ]
    if differ:
        raise RestoreError(
            f"{table}: {'; '.join(differ)}; a {fmt.description} backup restores only into the "
            "column types it was taken from; nothing was restored"
        )


def load_file(
    cur, ref: SetRef, table: str, entry: dict[str, Any], into: sql.Composable | None = None, loaders=()
) -> int:
    """COPY one file into `table` (or its staging table `into`) through `cur`, or through
    the `loaders` connections together when there are any; the rows loaded, checked
    against the manifest.

    The file is read once, hashed as it is read: a file swapped after the set was
    verified is caught here, before anything commits."""
    fmt = file_format(entry.get("format", DEFAULT_FORMAT))  # checked by verify_set
    target = into or table_identifier(table)
    if fmt.exact_types:
        check_types(cur, table, target, entry["columns"], fmt)
    columns = [c[0] for c in entry["columns"]]
    with ref.storage.open(entry["file"]) as raw:
        data, hashed = open_checked(raw, entry["file"], entry.get("part_sizes"))
        if loaders:
            rows = load_parallel(list(loaders), target, columns, fmt, data)
        else:
            cur.copy_expert(fmt.copy_from(target, columns), data, size=COPY_CHUNK)
            rows = cur.rowcount
        digest, size = hashed.finish()
    if (digest, size) != (entry["sha256"], entry["bytes"]):
        raise RestoreError(
            f"{table}: {entry['file']} does not match its sha256 (changed or damaged); nothing was restored"
        )
    if rows != entry["rows"]:
        raise RestoreError(f"{table}: restored {rows} rows, the manifest says {entry['rows']}")
    return rows


def loader_connections(
    connect: Callable[[], Connection] | None, jobs: int, entry: dict[str, Any]
) -> contextlib.AbstractContextManager[list[Connection]]:
    """`jobs` connections for one file's load, in open transactions the caller commits;
    none (load through the caller's own) for one job or a small file."""
    parallel = jobs > 1 and entry["bytes"] >= PARALLEL_MIN_BYTES
    return opened(connect, jobs if parallel else 0, autocommit=False)
