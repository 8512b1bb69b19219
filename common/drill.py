"""Restore drills: the newest nightly set restored into a scratch database and checked.

The PostgreSQL documentation says to test-restore even verified backups: a sha256 proves
the bytes are those written, not that they load and answer searches. A drill restores the
set (tables and indexes created from the manifest), then checks the row counts against
the manifest, the collection link (every embedding's collection is there), and a search
test: for a sample of stored vectors an exact nearest-neighbour query (index scans off)
finds that very row at distance 0. The result is kept in Redis for `check`, `/metrics`
and the API.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
import redis
from psycopg2 import sql

from common import run_keys
from common.config import COLLECTION_TABLE, EMBEDDING_TABLE, Settings
from common.consistency import COLLECTION_KEY, LINK_COLUMN
from common.db import DatabaseTarget, connect, first_line
from common.exceptions import ConfigurationError, VectorBackupError
from common.manifest import locate
from common.restore import restore_set

SAMPLE = 20


@dataclass(frozen=True)
class DrillResult:
    state: str  # "passed" or "failed"
    set: str | None
    duration: float
    at: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scratch_target(settings: Settings, url: str) -> DatabaseTarget:
    """The drill's database; never the live one, which a drill would replace."""
    target = DatabaseTarget.from_url(url)
    if target.identity == settings.database.identity:
        raise ConfigurationError("VECTOR_DRILL_DB_URL names the live database: a drill needs a scratch one")
    return target


def run_drill(
    settings: Settings, target: DatabaseTarget, where: Any = None, sample: int = SAMPLE
) -> DrillResult:
    """Restore the newest set of `<root>/vector_bak/` (or `where`) into `target`, then check it."""
    started, name = time.time(), None
    try:
        ref = locate(where or settings.backup_location(), settings.vector.backup_temp_suffix)
        name = f"{ref.storage.location}/{ref.manifest}"
        conn = connect(target)
        try:
            restored = restore_set(conn, ref, "replace", settings, connect=lambda: connect(target))
            detail = _check(conn, restored["tables"], sample)
        finally:
            conn.close()
        state = "passed"
    except (VectorBackupError, psycopg2.Error, OSError) as exc:
        state, detail = "failed", target.redact(first_line(exc))[:500]
    return DrillResult(state, name, round(time.time() - started, 3), time.time(), detail)


def _check(conn, tables: dict[str, int], sample: int) -> str:
    conn.autocommit = False
    with conn.cursor() as cur:
        for table, rows in tables.items():
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            found = cur.fetchone()[0]
            if found != rows:
                raise VectorBackupError(f"{table} holds {found} rows after the restore, the set {rows}")
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM {e} e WHERE NOT EXISTS (SELECT 1 FROM {c} c WHERE c.{k} = e.{l})"
            ).format(
                e=sql.Identifier(EMBEDDING_TABLE),
                c=sql.Identifier(COLLECTION_TABLE),
                k=sql.Identifier(COLLECTION_KEY),
                l=sql.Identifier(LINK_COLUMN),
            )
        )
        orphans = cur.fetchone()[0]
        if orphans:
            raise VectorBackupError(f"{orphans} embedding(s) reference a collection the restore lacks")
        searched = _search_test(cur, sample)
    conn.rollback()
    return f"rows {tables}, every embedding's collection present, {searched} exact searches found their row"


def _search_test(cur, sample: int) -> int:
    key = _key_column(cur)
    cur.execute("SET LOCAL enable_indexscan = off")  # exact: no approximate index answers
    cur.execute("SET LOCAL enable_bitmapscan = off")
    table = sql.Identifier(EMBEDDING_TABLE)
    cur.execute(
        sql.SQL(
            "SELECT {k}, embedding::text FROM {t} WHERE embedding IS NOT NULL ORDER BY random() LIMIT %s"
        ).format(k=sql.Identifier(key), t=table),
        (sample,),
    )
    searched = 0
    for row_key, vector in cur.fetchall():
        # Rows with the very same vector tie at distance 0; among them this one goes first.
        cur.execute(
            sql.SQL(
                "SELECT {k}::text, embedding <-> %s::vector FROM {t} "
                "WHERE vector_dims(embedding) = vector_dims(%s::vector) "  # an untyped column may mix them
                "ORDER BY embedding <-> %s::vector, {k}::text = %s DESC LIMIT 1"
            ).format(k=sql.Identifier(key), t=table),
            (vector, vector, vector, str(row_key)),
        )
        first = cur.fetchone()
        if first is None or first[0] != str(row_key) or first[1] != 0:
            raise VectorBackupError(
                f"an exact search for the stored vector of row {row_key} did not find it first"
            )
        searched += 1
    return searched


def _key_column(cur) -> str:
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attname IN ('id', 'uuid') "
        "AND NOT attisdropped ORDER BY attname LIMIT 1",
        (EMBEDDING_TABLE,),
    )
    found = cur.fetchone()
    if found is None:
        raise VectorBackupError(f"{EMBEDDING_TABLE} has neither an id nor a uuid column to search by")
    return found[0]


def record(client: redis.Redis, result: DrillResult) -> None:
    client.set(run_keys.LAST_DRILL, json.dumps(result.as_dict()), ex=40 * 86400)


def last_drill(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.get(run_keys.LAST_DRILL)
    return json.loads(raw) if raw else None
