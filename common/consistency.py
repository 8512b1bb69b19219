"""One consistent backup set: every embedding's collection_id exists in the collection file.

The table tasks run in parallel, each in its own snapshot, so a collection created or
deleted between their snapshots could break the link. Each table backup therefore
records, from the same snapshot as its COPY, the collection ids its file holds (the
collection table) or may reference (the embedding table: with its foreign key in place,
every referenced id exists in the collection table of the same snapshot, so reading
that small table replaces a scan of the embeddings; without the key, the distinct
`collection_id`s are scanned). When the set is closed:

- a referenced id missing from the collection file was created after the collection
  snapshot: re-taking the (small) collection backup, now later than every embedding
  snapshot, brings it in;
- an id still missing after that was deleted while the backup ran (its embeddings went
  with it, ON DELETE CASCADE): the set cannot be made consistent and fails, and a
  re-run succeeds.

A shared exported snapshot (`pg_export_snapshot`) would need a transaction held open
until every table task has started, which a small worker pool can deadlock on; the
check above needs no coordination. `verify` re-checks the link from the files alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.config import COLLECTION_TABLE
from common.db import table_identifier

COLLECTION_KEY = "uuid"
LINK_COLUMN = "collection_id"


def link_column(table: str, columns: Iterable[str]) -> str | None:
    """The column of `table` that holds collection ids, or None if it has none."""
    names = set(columns)
    if table == COLLECTION_TABLE:
        return COLLECTION_KEY if COLLECTION_KEY in names else None
    return LINK_COLUMN if LINK_COLUMN in names else None


def snapshot_collection_ids(
    conn: Connection, table: str, column: str, schema: Mapping[str, Any] | None = None
) -> list[str]:
    """The collection ids `table` holds or may reference, read in the caller's transaction."""
    referenced = next(
        (
            key["references"]
            for key in (schema or {}).get("foreign_keys") or []
            if key["columns"] == [LINK_COLUMN]
            and key["ref_columns"] == [COLLECTION_KEY]
            and key["references"].rsplit(".", 1)[-1].strip('"') == COLLECTION_TABLE
        ),
        None,
    )
    if table != COLLECTION_TABLE and referenced:
        # The catalog's own name for the table (`regclass`), so it is already quoted.
        query = sql.SQL("SELECT {key}::text FROM {table}").format(
            key=sql.Identifier(COLLECTION_KEY), table=sql.SQL(referenced)
        )
    else:
        query = sql.SQL("SELECT DISTINCT {col}::text FROM {table} WHERE {col} IS NOT NULL").format(
            col=sql.Identifier(column), table=table_identifier(table)
        )
    with conn.cursor() as cur:
        cur.execute(query)
        return sorted(row[0] for row in cur.fetchall())


def missing_collections(tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Collection ids referenced by a table of the set but absent from its collection file.

    Empty when the set has no collection table or no table recorded ids.
    """
    collection = tables.get(COLLECTION_TABLE)
    if not collection or "collection_ids" not in collection:
        return []
    present = set(collection["collection_ids"])
    referenced = set()
    for name, info in tables.items():
        if name != COLLECTION_TABLE:
            referenced.update(info.get("collection_ids", ()))
    return sorted(referenced - present)
