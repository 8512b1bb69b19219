"""The DDL that recreates a table and its indexes, read from the catalog for the manifest."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import table_identifier


def table_definition(conn: Connection, table: str) -> tuple[list[list[str]], list[str]]:
    """`table`'s columns as [[name, type], ...] in CSV header order, and the statements that
    recreate it: CREATE TABLE, its constraints, its other indexes.

    Both empty if `table` is not a relation. Constraints come after the table so a restore
    can create the referenced table first.
    """
    ident = table_identifier(table)
    name = ident.as_string(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
            "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (name,),
        )
        attributes = cur.fetchall()
        if not attributes:
            return [], []
        cur.execute(
            "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(%s) ORDER BY contype DESC, conname",
            (name,),
        )
        constraints = cur.fetchall()
        cur.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass(%s) "
            "AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = to_regclass(%s)) "
            "ORDER BY indexrelid",
            (name, name),
        )
        indexes = [row[0] for row in cur.fetchall()]
    columns = [[column, kind] for column, kind, _, _ in attributes]
    column_sql = sql.SQL(", ").join(
        sql.SQL("{} {}{}{}").format(
            sql.Identifier(column),
            sql.SQL(kind),
            sql.SQL(" NOT NULL" if not_null else ""),
            sql.SQL(f" DEFAULT {default}" if default else ""),
        )
        for column, kind, not_null, default in attributes
    )
    create = sql.SQL("CREATE TABLE {} ({})").format(ident, column_sql).as_string(conn)
    alters = [
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}")
        .format(ident, sql.SQL(conname), sql.SQL(definition))
        .as_string(conn)
        for conname, definition in constraints
    ]
    return columns, [create, *alters, *indexes]
