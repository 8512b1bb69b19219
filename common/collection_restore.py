"""Restore chosen LangChain collections from a set, in place: each named collection's row
(`langchain_pg_collection.name`) and its rows in the linked tables (`collection_id`)
replace just those of the live store, in one short transaction; every other
collection's rows are left as they are, and the live tables keep their indexes (no
staging table, no swap: the change is a few rows, not the whole store).

The set's files are first loaded, whole, into temporary tables of this session with
`COPY FROM`, each hashed as it is read and its rows counted (`common.load_file`, as a
full restore does: a file changed since the set was verified is refused), so that the
transaction that changes the store only moves rows from one table to another.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.config import COLLECTION_TABLE, RestoreSettings, Settings, load_settings
from common.consistency import COLLECTION_KEY, LINK_COLUMN
from common.db import first_line, retry_while_locked, rollback_quietly, table_identifier
from common.exceptions import RestoreError
from common.in_place import Step
from common.load_file import load_file
from common.manifest import SetRef, locate, verify_set
from common.restore import configured_tables, restore_lock

NAME_COLUMN = "name"
STRATEGY = "collections"  # always in place, in one transaction
_TEMP_PREFIX = "collection_restore_"
_SHOWN_NAMES = 20  # the set's collection names an error lists at most


class CollectionOutcome(TypedDict):
    rows: int  # rows of the linked tables restored from the set
    removed: int  # live rows of the linked tables deleted
    added: bool  # no collection of this name was live
    recreated: bool  # live under another uuid: replaced by the set's


class CollectionRestoreResult(TypedDict):
    manifest: str
    strategy: str
    collections: dict[str, CollectionOutcome]
    tables: dict[str, int]  # rows inserted per table
    removed: dict[str, int]  # live rows deleted per table
    duration: float


@dataclass(frozen=True)
class _Table:
    """A configured table, the set's entry for it, and the temporary table its file goes into."""

    table: str
    entry: dict[str, Any]
    temp: sql.Identifier
    link: str  # the collection key in the collection table; `collection_id` elsewhere

    @property
    def live(self) -> sql.Identifier:
        return table_identifier(self.table)

    @property
    def columns(self) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(c[0]) for c in self.entry["columns"])


def restore_collections(
    conn: Connection, path: SetRef | Path | str, names: list[str], settings: Settings | None = None
) -> CollectionRestoreResult:
    """Verify the set at `path` (its signature too), then replace the live collections
    called `names` by the set's: all of them or, on any error, none. A name the set does
    not hold is refused before anything changes; a name not live is added; a collection
    re-created since (another uuid) is replaced by the set's, under the set's uuid.

    The live tables must exist and the manifest must list exactly the configured tables:
    the collection table and tables linked to it by `collection_id`."""
    started = time.time()
    wanted = _wanted(names)
    settings = settings or load_settings()
    ref = locate(path, settings.vector.backup_temp_suffix)
    # As restore_set: each file is hashed as COPY reads it below, so it is read once.
    manifest = verify_set(ref, deep=False, signing_key=settings.signing_key, hash_files=False)
    tables = _tables(ref, manifest, settings.vector.supported_tables)
    conn.autocommit = True
    step = Step("reading the live tables")
    with restore_lock(conn):
        try:
            _check_live(conn, tables)
            _load(conn, ref, tables, wanted, step)
            step.now = "replacing the collections"
            collections, inserted, removed = _replace(conn, tables, wanted, settings.restore)
        except (psycopg2.Error, OSError) as exc:
            reason = first_line(exc)
            raise RestoreError(f"{step.now}: restore failed, nothing was restored: {reason}") from exc
        finally:
            _drop(conn, tables)
    return CollectionRestoreResult(
        manifest=ref.manifest,
        strategy=STRATEGY,
        collections=collections,
        tables=inserted,
        removed=removed,
        duration=round(time.time() - started, 3),
    )


def _wanted(names: list[str]) -> list[str]:
    """The names asked for, each once, in their order."""
    if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
        raise RestoreError("name at least one collection (a non-empty name); nothing was restored")
    return list(dict.fromkeys(names))


def _tables(ref: SetRef, manifest: dict[str, Any], configured: tuple[str, ...]) -> list[_Table]:
    """The configured tables, the collection table first; refused unless every other one
    links its rows to a collection."""
    entries = configured_tables(ref, manifest, configured)
    collection = [t for t in entries if t.rsplit(".", 1)[-1] == COLLECTION_TABLE]
    if len(collection) != 1:
        raise RestoreError(
            f"restoring collections needs exactly one {COLLECTION_TABLE} among VECTOR_SUPPORTED_TABLES; "
            "nothing was restored"
        )
    ordered = collection + [t for t in entries if t != collection[0]]
    tables = []
    for i, table in enumerate(ordered):
        columns = [c[0] for c in entries[table]["columns"]]
        needed = (COLLECTION_KEY, NAME_COLUMN) if i == 0 else (LINK_COLUMN,)
        absent = [c for c in needed if c not in columns]
        if absent:
            raise RestoreError(
                f"{table}: the set has no {', '.join(absent)} column, so its rows cannot be told "
                "apart by collection; nothing was restored"
            )
        link = COLLECTION_KEY if i == 0 else LINK_COLUMN
        tables.append(_Table(table, entries[table], sql.Identifier("pg_temp", f"{_TEMP_PREFIX}{i}"), link))
    return tables


def _check_live(conn: Connection, tables: list[_Table]) -> None:
    with conn.cursor() as cur:
        for t in tables:
            cur.execute("SELECT to_regclass(%s)", (t.live.as_string(conn),))
            if cur.fetchone()[0] is None:
                raise RestoreError(
                    f"{t.table} does not exist here: restore the whole set to create it; nothing was restored"
                )


def _load(conn: Connection, ref: SetRef, tables: list[_Table], wanted: list[str], step: Step) -> None:
    """Each file into a temporary table shaped as the live one (its column types: a binary
    file must match them, and rows move between identical columns); the names are checked
    once the collection file is in, before the larger files are read."""
    with conn.cursor() as cur:
        for t in tables:
            step.now = t.table
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t.temp))
            cur.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {})").format(t.temp, t.live))
            load_file(cur, ref, t.table, t.entry, into=t.temp)
            # Autovacuum never analyzes temporary tables; the joins below want their sizes.
            cur.execute(sql.SQL("ANALYZE {}").format(t.temp))
            if t is tables[0]:
                _check_names(cur, ref, t, wanted)


def _check_names(cur, ref: SetRef, collection: _Table, wanted: list[str]) -> None:
    cur.execute(
        sql.SQL("SELECT DISTINCT {name} FROM {temp} WHERE {name} IS NOT NULL ORDER BY 1").format(
            name=sql.Identifier(NAME_COLUMN), temp=collection.temp
        )
    )
    held = [row[0] for row in cur.fetchall()]
    present = set(held)
    missing = [n for n in wanted if n not in present]
    if missing:
        shown = ", ".join(map(repr, held[:_SHOWN_NAMES])) + (", …" if len(held) > _SHOWN_NAMES else "")
        raise RestoreError(
            f"{', '.join(map(repr, missing))}: no such collection in {ref.manifest} "
            f"(it holds {len(held)}: {shown or 'none'}); nothing was restored"
        )


def _replace(
    conn: Connection, tables: list[_Table], wanted: list[str], how: RestoreSettings
) -> tuple[dict[str, CollectionOutcome], dict[str, int], dict[str, int]]:
    """One transaction: lock the live tables against writers, delete the named collections'
    rows, insert the set's. It waits at most `lock_timeout_s` at a time for the tables
    (writers queue behind a waiting lock; searches do not), retried for `swap_wait_s`."""
    conn.autocommit = False

    def replace() -> dict:
        with conn.cursor() as cur:
            timeout = f"{int(how.lock_timeout_s * 1000)}ms"
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
            # SHARE ROW EXCLUSIVE conflicts with every INSERT, UPDATE and DELETE, and
            # not with SELECT: writes committed before it are all seen (and replaced,
            # for the named collections), writes after it see the restored rows, and
            # none lands in between, where a row written into a collection being
            # replaced would survive beside the set's (or dangle, with no foreign key).
            cur.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(t.live for t in tables)
                )
            )
            return _move_rows(cur, tables, wanted)

    try:
        return retry_while_locked(
            conn,
            replace,
            how.swap_wait_s,
            f"the live tables stayed in use for {how.swap_wait_s:g}s (open transactions "
            "writing to them), so no collection was replaced; nothing was restored",
        )
    finally:
        rollback_quietly(conn)
        if not conn.closed:
            conn.autocommit = True


def _move_rows(
    cur, tables: list[_Table], wanted: list[str]
) -> tuple[dict[str, CollectionOutcome], dict[str, int], dict[str, int]]:
    collection, linked = tables[0], tables[1:]
    key, name = sql.Identifier(COLLECTION_KEY), sql.Identifier(NAME_COLUMN)
    live_ids, set_ids = (
        _ids(cur, source, key, name, wanted) for source in (collection.live, collection.temp)
    )
    removed_by, restored_by = dict.fromkeys(wanted, 0), dict.fromkeys(wanted, 0)
    inserted, removed = {}, {}
    for t in linked:
        _count_by_name(cur, t.live, collection.live, wanted, removed_by)
        _count_by_name(cur, t.temp, collection.temp, wanted, restored_by)
        # Linked rows first: a foreign key without ON DELETE CASCADE would refuse the
        # collection rows' delete.
        cur.execute(
            sql.SQL("DELETE FROM {t} WHERE {link} IN (SELECT {key} FROM {c} WHERE {name} = ANY(%s))").format(
                t=t.live, link=sql.Identifier(LINK_COLUMN), key=key, c=collection.live, name=name
            ),
            (wanted,),
        )
        removed[t.table] = cur.rowcount
    cur.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(collection.live, name), (wanted,))
    removed[collection.table] = cur.rowcount
    cur.execute(
        sql.SQL("INSERT INTO {live} ({cols}) SELECT {cols} FROM {temp} WHERE {name} = ANY(%s)").format(
            live=collection.live, cols=collection.columns, temp=collection.temp, name=name
        ),
        (wanted,),
    )
    inserted[collection.table] = cur.rowcount
    for t in linked:
        cur.execute(
            sql.SQL(
                "INSERT INTO {live} ({cols}) SELECT {cols} FROM {temp} "
                "WHERE {link} IN (SELECT {key} FROM {c} WHERE {name} = ANY(%s))"
            ).format(
                live=t.live,
                cols=t.columns,
                temp=t.temp,
                link=sql.Identifier(LINK_COLUMN),
                key=key,
                c=collection.temp,
                name=name,
            ),
            (wanted,),
        )
        inserted[t.table] = cur.rowcount
    outcomes = {
        n: CollectionOutcome(
            rows=restored_by[n],
            removed=removed_by[n],
            added=not live_ids.get(n),
            recreated=bool(live_ids.get(n)) and live_ids.get(n) != set_ids.get(n),
        )
        for n in wanted
    }
    return outcomes, {t.table: inserted[t.table] for t in tables}, {t.table: removed[t.table] for t in tables}


def _ids(cur, source: sql.Identifier, key, name, wanted: list[str]) -> dict[str, set[str]]:
    """The collection ids each of the `wanted` names has in `source`."""
    cur.execute(
        sql.SQL("SELECT {name}, {key}::text FROM {source} WHERE {name} = ANY(%s)").format(
            name=name, key=key, source=source
        ),
        (wanted,),
    )
    ids: dict[str, set[str]] = {}
    for found, collection_id in cur.fetchall():
        ids.setdefault(found, set()).add(collection_id)
    return ids


def _count_by_name(
    cur, linked: sql.Identifier, collection: sql.Identifier, wanted: list[str], counts: dict[str, int]
) -> None:
    """Add the rows of `linked` in each of the `wanted` collections of `collection` to `counts`."""
    cur.execute(
        sql.SQL(
            "SELECT c.{name}, count(*) FROM {linked} r JOIN {collection} c ON r.{link} = c.{key} "
            "WHERE c.{name} = ANY(%s) GROUP BY c.{name}"
        ).format(
            name=sql.Identifier(NAME_COLUMN),
            linked=linked,
            collection=collection,
            link=sql.Identifier(LINK_COLUMN),
            key=sql.Identifier(COLLECTION_KEY),
        ),
        (wanted,),
    )
    for found, rows in cur.fetchall():
        counts[found] += rows


def _drop(conn: Connection, tables: list[_Table]) -> None:
    """Drop the temporary tables; best effort: a connection that died took them with it."""
    if conn.closed:
        return
    rollback_quietly(conn)
    conn.autocommit = True
    with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
        for t in tables:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t.temp))
