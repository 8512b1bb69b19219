"""Whether a live table can be replaced by a staging table renamed into its place.

A swap drops the live table, so everything attached to it must either be rebuilt on the
staging table (columns, defaults, CHECK and NOT NULL, keys, the indexes the table
description holds, foreign keys between the configured tables, owner, grants, options,
comment) or be absent. Anything else — a view on it, a foreign key from another table,
a trigger, a policy, an owned sequence, a publication — would be lost or would block the
DROP, so such a table is restored in place instead (readers wait for that restore).
"""

from __future__ import annotations

from typing import Any

from psycopg2.extensions import connection as Connection

# The catalogs of objects that may depend on a table and still let it be swapped: its
# own indexes and constraints (checked below), column defaults, its row type.
_OWN = ("pg_class", "pg_constraint", "pg_attrdef", "pg_type")
_WHAT = {
    "pg_rewrite": "a view or rule uses it",
    "pg_trigger": "it has a trigger",
    "pg_policy": "it has row-level security policies",
    "pg_publication_rel": "it is in a publication",
    "pg_statistic_ext": "it has extended statistics",
}


def swap_refusal(conn: Connection, oid: int, schema: dict[str, Any], configured: set[int]) -> str | None:
    """Why the live table `oid` (described by `schema`, from `read_schema`) cannot be
    swapped, or None. `configured` holds the oids of every configured table: foreign keys
    among them are rebuilt, any other one is a dependent."""
    if "unsupported" in schema:
        return schema["unsupported"]
    odd = next((i for i in schema.get("indexes", []) if "unsupported" in i), None)
    if odd is not None:
        return f"index {odd['name']} is {odd['unsupported']}"
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relkind, relrowsecurity, relreplident, reltablespace <> 0, "
            "EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid), "
            "EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.oid AND attacl IS NOT NULL) "
            "FROM pg_class c WHERE oid = %s",
            (oid,),
        )
        kind, row_security, identity, tablespace, inherits, column_grants = cur.fetchone()
        cur.execute(
            "SELECT d.classid::regclass::text, d.objid, c.relkind, k.conrelid FROM pg_depend d "
            "LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid "
            "LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s "
            "AND d.deptype IN ('n', 'a')",
            (oid,),
        )
        dependents = cur.fetchall()
    plain = {
        "it is not a plain table": kind != "r",
        "it has row-level security": row_security,
        "its replica identity is not the default": identity != "d",
        "it is in a tablespace of its own": tablespace,
        "it has inheritance children or parents": inherits,
        "it has column-level grants": column_grants,
    }
    reason = next((why for why, applies in plain.items() if applies), None)
    if reason:
        return reason
    for catalog, _objid, relkind, conrelid in dependents:
        if catalog not in _OWN:
            return _WHAT.get(catalog, f"an object in {catalog} depends on it")
        if catalog == "pg_class" and relkind == "S":
            return "it owns a sequence (a serial or identity column)"
        if catalog == "pg_class" and relkind != "i":
            return "a relation uses it"
        if catalog == "pg_constraint" and conrelid != oid and conrelid not in configured:
            return "a foreign key of a table that is not restored references it"
    return None
