"""Empty the configured tables, only when the backup provably holds every row."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TypedDict

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import first_line, rollback_quietly, table_fingerprint, table_identifier
from common.exceptions import TruncateError, TruncateRefusedError


class TableTruncate(TypedDict, total=False):
    success: bool
    rows_before: int
    rows_after: int
    duration: float
    error: str


def truncate_tables(
    conn: Connection,
    backed_up_rows: Mapping[str, int],
    tables: Sequence[str],
    lock_timeout_s: float = 30.0,
    fingerprints: Mapping[str, str] | None = None,
) -> dict[str, TableTruncate]:
    """TRUNCATE `tables` in one transaction, or nothing at all.

    Under the ACCESS EXCLUSIVE lock TRUNCATE needs anyway, each table's row count must
    equal the rows its backup holds (`backed_up_rows`); otherwise rows written since the
    backup would be lost, so the whole truncate is refused and rolled back. With
    `fingerprints` (from `table_fingerprint` in the backup's snapshot) the table's content
    must match too, which also catches updates and deletes balanced by inserts.
    Raises `TruncateRefusedError` or `TruncateError`; both leave every table as it was.
    """
    missing = [t for t in tables if t not in backed_up_rows]
    if missing:
        raise TruncateRefusedError(f"no backup of {', '.join(missing)}; nothing was truncated")
    results: dict[str, TableTruncate] = {}
    conn.autocommit = False
    current = None
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (f"{int(lock_timeout_s * 1000)}ms",))
            for current in tables:
                started = time.time()
                ident = table_identifier(current)
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident))
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                rows_before = cur.fetchone()[0]
                if rows_before != backed_up_rows[current]:
                    raise TruncateRefusedError(
                        f"{current} changed since its backup: the backup holds "
                        f"{backed_up_rows[current]} rows, the table now has {rows_before}; "
                        "nothing was truncated, run the backup again"
                    )
                if fingerprints is not None and table_fingerprint(conn, current) != fingerprints.get(current):
                    raise TruncateRefusedError(
                        f"{current} changed since its backup: rows were inserted, updated or deleted; "
                        "nothing was truncated, run the backup again"
                    )
                cur.execute(sql.SQL("TRUNCATE TABLE {}").format(ident))
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                rows_after = cur.fetchone()[0]
                if rows_after != 0:
                    raise TruncateError(f"{current} still has {rows_after} rows after TRUNCATE")
                results[current] = TableTruncate(
                    success=True,
                    rows_before=rows_before,
                    rows_after=rows_after,
                    duration=round(time.time() - started, 3),
                )
        conn.commit()
    except (TruncateRefusedError, TruncateError):
        rollback_quietly(conn)
        raise
    except psycopg2.errors.LockNotAvailable:
        rollback_quietly(conn)
        raise TruncateError(
            f"{current}: could not lock the table within {lock_timeout_s:g}s "
            "(another session is using it); nothing was truncated"
        ) from None
    except psycopg2.Error as exc:
        rollback_quietly(conn)
        raise TruncateError(f"{current}: TRUNCATE failed: {first_line(exc)}; nothing was truncated") from exc
    finally:
        if not conn.closed:
            conn.autocommit = True
    return results
