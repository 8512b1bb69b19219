"""A table's shape as data — columns, keys, foreign keys, indexes — read from the catalog
for the manifest, checked when read back, and turned into SQL only by composing
identifiers and a few checked words with `psycopg2.sql`.

A manifest is read from a backup directory, which is hostile input: nothing in it is
ever run as SQL text. Types must look like a type name and be known to the server
(`to_regtype`); index methods, foreign-key actions and option values come from short
allow-lists; operator classes must exist for their index method; every column a key or
an index names must be one of the table's columns. Anything else is refused.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import table_identifier
from common.exceptions import RestoreError, VerifyError

# What `format_type` writes: a name (maybe quoted, maybe schema-qualified) or one of the
# types SQL spells in several words; then a type modifier and array marks, both optional.
# Matched whole, ASCII only. A quoted name cannot close its quotes: `"` is not allowed in it.
_NAME = r'(?:[a-z_][a-z0-9_$]{0,62}|"[^"\x00]{1,63}")'
_MODIFIER = r"(?:\(\d{1,9}(?:, ?\d{1,9})?\))"
_FIELDS = r"(?: (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second))?)"
_SPELLED_OUT = (
    rf"(?:character varying|double precision|bit varying"
    rf"|(?:timestamp|time){_MODIFIER}? with(?:out)? time zone|interval{_FIELDS}?)"
)
TYPE = re.compile(rf"(?:(?:{_NAME}\.)?{_NAME}|{_SPELLED_OUT}){_MODIFIER}?(?:\[\])*", re.ASCII)
WORD = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)
OPTION_VALUE = re.compile(r"[A-Za-z0-9_.]{1,32}", re.ASCII)
INDEX_METHODS = ("btree", "hash", "gin", "gist", "brin", "hnsw", "ivfflat")
ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
# Composed from these constants only, never from the manifest's text.
ACTION_SQL = {word: sql.SQL(word) for word in ACTIONS.values()}
KEYS = {"columns", "primary_key", "unique", "foreign_keys", "indexes", "unsupported"}


def read_schema(conn: Connection, table: str) -> dict[str, Any]:
    """`table`'s columns (CSV order), primary key, unique keys, foreign keys and other
    indexes, as plain data; empty if `table` is not a relation. An index the description
    cannot hold (on expressions, or partial) is recorded as `unsupported`."""
    name = table_identifier(table).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (name,),
        )
        columns = [{"name": n, "type": t, "not_null": nn} for n, t, nn in cur.fetchall()]
        if not columns:
            return {}
        odd_types = [c for c in columns if not TYPE.fullmatch(c["type"])]
        cur.execute(
            "SELECT conname, contype, confrelid::regclass::text, confdeltype, confupdtype, "
            "ARRAY(SELECT attname FROM unnest(conkey) WITH ORDINALITY k(n, i) "
            "  JOIN pg_attribute ON attrelid = conrelid AND attnum = k.n ORDER BY k.i), "
            "ARRAY(SELECT attname FROM unnest(confkey) WITH ORDINALITY k(n, i) "
            "  JOIN pg_attribute ON attrelid = confrelid AND attnum = k.n ORDER BY k.i) "
            "FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u', 'f') "
            "ORDER BY conname",
            (name,),
        )
        constraints = cur.fetchall()
        cur.execute(
            "SELECT i.relname, am.amname, x.indisunique, x.indexprs IS NOT NULL OR x.indpred IS NOT NULL, "
            "ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(n, o) "
            "  LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n ORDER BY k.o), "
            "ARRAY(SELECT c.opcname FROM unnest(x.indclass) WITH ORDINALITY k(n, o) "
            "  JOIN pg_opclass c ON c.oid = k.n ORDER BY k.o), "
            "coalesce(i.reloptions, '{}') "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
            "WHERE x.indrelid = to_regclass(%s) "
            "AND x.indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = x.indrelid) "
            "ORDER BY i.relname",
            (name,),
        )
        indexes = cur.fetchall()
    schema: dict[str, Any] = {"columns": columns, "primary_key": None, "unique": [], "foreign_keys": []}
    if odd_types:
        # Backed up and verified as usual; restore will not create such a table itself.
        schema["unsupported"] = f"column {odd_types[0]['name']!r} has type {odd_types[0]['type']!r}"
    for conname, kind, referenced, on_delete, on_update, keys, ref_keys in constraints:
        if kind == "p":
            schema["primary_key"] = {"name": conname, "columns": list(keys)}
        elif kind == "u":
            schema["unique"].append({"name": conname, "columns": list(keys)})
        else:
            schema["foreign_keys"].append(
                {
                    "name": conname,
                    "columns": list(keys),
                    "references": referenced,
                    "ref_columns": list(ref_keys),
                    "on_delete": ACTIONS[on_delete],
                    "on_update": ACTIONS[on_update],
                }
            )
    schema["indexes"] = [
        {"name": index, "unsupported": "an index on expressions or a partial index"}
        if odd or None in keys
        else {
            "name": index,
            "method": method,
            "unique": unique,
            "columns": [{"name": k, "opclass": c} for k, c in zip(keys, classes, strict=True)],
            "options": dict(option.split("=", 1) for option in options),
        }
        for index, method, unique, odd, keys, classes, options in indexes
    ]
    return schema


def description_to_create(table: str, manifest: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The manifest's description of `table` (missing here, so to be created from it);
    `RestoreError` for a format 1 manifest, which describes tables only as SQL text."""
    if manifest["format_version"] < 2 or "schema" not in entry:
        raise RestoreError(
            f"{table}: missing, and this format {manifest['format_version']} manifest "
            "describes it only as SQL text, which restore never runs; create the table, "
            "then restore into it"
        )
    return entry["schema"]


def check_schema(table: str, schema: Any, columns: list[str]) -> None:
    """Raise `VerifyError` unless `schema` is a well-formed description of `table` whose
    column names are `columns` (the CSV header) and whose every word is allowed."""

    def refuse(what: str) -> VerifyError:
        return VerifyError(f"{table}: the manifest's table description is not allowed: {what}")

    try:
        _check_schema(schema, columns, refuse)
    except (TypeError, AttributeError, KeyError, ValueError):
        raise refuse("it is malformed") from None


def _check_schema(schema: Any, columns: list[str], refuse) -> None:
    if not isinstance(schema, dict) or not KEYS.issuperset(schema) or "columns" not in schema:
        raise refuse("not a description of columns, keys and indexes")
    described = schema["columns"]
    if not isinstance(described, list) or [_text(c, "name") for c in described] != columns:
        raise refuse("its columns are not the file's columns")
    if "unsupported" in schema:
        if not isinstance(schema["unsupported"], str):
            raise refuse("its reason for being unsupported is not text")
        return  # restore will not create it, so nothing else in it is ever used
    for column in described:
        if not TYPE.fullmatch(_text(column, "type")) or not isinstance(column.get("not_null"), bool):
            raise refuse(f"column {column['name']!r} has type {str(column.get('type'))[:80]!r}")
    keys = [schema["primary_key"]] if schema.get("primary_key") else []
    keys += _list(schema.get("unique"), refuse) + _list(schema.get("foreign_keys"), refuse)
    for key in keys:
        _check_columns(key, "columns", columns, refuse)
        _name(key, refuse)
    for key in _list(schema.get("foreign_keys"), refuse):
        ref_columns = key.get("ref_columns")
        if not isinstance(ref_columns, list) or not ref_columns or not all(map(_is_name, ref_columns)):
            raise refuse(f"foreign key {key.get('name')!r} references no columns")
        if not _is_name(key.get("references")):
            raise refuse(f"foreign key {key.get('name')!r} references no table")
        if key.get("on_delete") not in ACTION_SQL or key.get("on_update") not in ACTION_SQL:
            raise refuse(f"foreign key {key.get('name')!r} has an unknown action")
    for index in _list(schema.get("indexes"), refuse):
        _name(index, refuse)
        if "unsupported" in index:
            continue
        if index.get("method") not in INDEX_METHODS or not isinstance(index.get("unique"), bool):
            raise refuse(f"index {index.get('name')!r} uses method {str(index.get('method'))[:40]!r}")
        parts = _list(index.get("columns"), refuse)
        if not parts or any(not isinstance(p, dict) or p.get("name") not in columns for p in parts):
            raise refuse(f"index {index.get('name')!r} names a column the table does not have")
        if any(not WORD.fullmatch(_text(p, "opclass")) for p in parts):
            raise refuse(f"index {index.get('name')!r} has an operator class that is not a plain name")
        options = index.get("options")
        if not isinstance(options, dict) or not all(
            WORD.fullmatch(str(k)) and OPTION_VALUE.fullmatch(str(v)) for k, v in options.items()
        ):
            raise refuse(f"index {index.get('name')!r} has options that are not plain words or numbers")


def create_statements(
    conn: Connection,
    table: str,
    schema: dict[str, Any],
    columns: list[str],
    tables: tuple[str, ...],
    into: Relations | None = None,
) -> TableStatements:
    """CREATE TABLE for `table`, the keys and indexes to build after its rows are in, and
    its foreign keys (to add once every table's keys are built). `schema` must have passed
    `check_schema`; here the server checks that each type and operator class exists, and
    foreign keys may only reference `tables`. Raises `VerifyError` before anything is
    created.

    `into` builds them for other relations: a staging table (`into.table`) whose keys and
    indexes carry other names (`into.index`) and whose foreign keys reference the other
    staging tables (`into.table` of the configured table referenced)."""
    check_schema(table, schema, columns)  # again: nothing unchecked is ever composed
    if "unsupported" in schema:
        raise VerifyError(
            f"{table}: {schema['unsupported']}, which restore cannot recreate; create the table "
            "yourself, then restore into it"
        )
    references = {}
    for key in schema.get("foreign_keys") or []:
        references[key["name"]] = _configured(key["references"], tables)
        if references[key["name"]] is None:
            raise VerifyError(
                f"{table}: foreign key {key['name']!r} references {key['references']!r}, "
                "which is not one of VECTOR_SUPPORTED_TABLES"
            )
    into = into or Relations()
    ident = into.table(table)
    with conn.cursor() as cur:
        for column in schema["columns"]:
            cur.execute("SELECT to_regtype(%s)", (column["type"],))
            if cur.fetchone()[0] is None:
                raise VerifyError(f"{table}: column {column['name']!r} has unknown type {column['type']!r}")
        for index in schema.get("indexes") or []:
            if "unsupported" in index:
                raise VerifyError(
                    f"{table}: index {index['name']!r} is {index['unsupported']}, which restore cannot "
                    "recreate; create the table yourself, then restore into it"
                )
            for part in index["columns"]:
                cur.execute(
                    "SELECT 1 FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod "
                    "WHERE c.opcname = %s AND a.amname = %s",
                    (part["opclass"], index["method"]),
                )
                if cur.fetchone() is None:
                    raise VerifyError(
                        f"{table}: index {index['name']!r}: no operator class {part['opclass']!r} "
                        f"for {index['method']}"
                    )
    column_sql = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(
            sql.Identifier(c["name"]), sql.SQL(c["type"]), sql.SQL(" NOT NULL" if c["not_null"] else "")
        )
        for c in schema["columns"]
    )
    create = sql.SQL("CREATE TABLE {} ({})").format(ident, column_sql)
    keys = [("PRIMARY KEY", schema["primary_key"])] if schema.get("primary_key") else []
    keys += [("UNIQUE", key) for key in schema.get("unique") or []]
    # A key is built as a unique index, then attached: index builds on one table can run
    # side by side (ADD PRIMARY KEY would lock the table for the whole build).
    indexes = [_key_index(ident, key, into) for _kind, key in keys]
    # The slow ones first, so that builds side by side end together.
    ordered = sorted(schema.get("indexes") or [], key=lambda i: i["method"] == "btree")
    indexes = [_index(ident, index, into) for index in ordered] + indexes
    attach = [
        sql.SQL("ALTER TABLE {0} ADD CONSTRAINT {1} {2} USING INDEX {1}").format(
            ident, sql.Identifier(into.index(key["name"])), sql.SQL(kind)
        )
        for kind, key in keys
    ]
    foreign = [
        _foreign_key(ident, key, into.table(references[key["name"]]))
        for key in schema.get("foreign_keys") or []
    ]
    return TableStatements(create, indexes, attach, foreign)


class TableStatements(NamedTuple):
    """What makes a described table: CREATE TABLE; the indexes to build after the load,
    keys' included (independent of each other); the statements that make those keys
    constraints; the foreign keys (once every table's keys exist)."""

    create: sql.Composed
    indexes: list[sql.Composed]
    keys: list[sql.Composed]
    foreign: list[sql.Composed]


def _key_index(ident: sql.Composable, key: dict[str, Any], into: Relations) -> sql.Composed:
    return sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
        sql.Identifier(into.index(key["name"])), ident, _names(key["columns"])
    )


def _index(ident: sql.Composable, index: dict[str, Any], into: Relations) -> sql.Composed:
    parts = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(p["name"]), sql.Identifier(p["opclass"]))
        for p in index["columns"]
    )
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(str(v))) for k, v in index["options"].items()
    )
    return sql.SQL("CREATE {}INDEX {} ON {} USING {} ({}){}").format(
        sql.SQL("UNIQUE " if index["unique"] else ""),
        sql.Identifier(into.index(index["name"])),
        ident,
        sql.Identifier(index["method"]),
        parts,
        sql.SQL(" WITH ({})").format(options) if index["options"] else sql.SQL(""),
    )


def _foreign_key(ident: sql.Composable, key: dict[str, Any], referenced: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {} ON UPDATE {}"
    ).format(
        ident,
        sql.Identifier(key["name"]),
        _names(key["columns"]),
        referenced,
        _names(key["ref_columns"]),
        ACTION_SQL[key["on_delete"]],
        ACTION_SQL[key["on_update"]],
    )


class Relations:
    """The relations statements are composed for: by default the tables themselves and
    their keys' and indexes' own names."""

    def table(self, name: str) -> sql.Composed:
        return table_identifier(name)

    def index(self, name: str) -> str:
        """The name the key or index called `name` gets (the same on every call)."""
        return name


def _configured(reference: str, tables: tuple[str, ...]) -> str | None:
    """The configured table a foreign key's target (the catalog's `regclass` text) is."""
    bare = reference.rsplit(".", 1)[-1].strip('"')
    return next((t for t in tables if reference == t or bare == t.rsplit(".", 1)[-1]), None)


def _names(names: list[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _text(entry: Any, key: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else ""


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 63 and "\0" not in value


def _name(entry: Any, refuse) -> None:
    if not isinstance(entry, dict) or not _is_name(entry.get("name")):
        raise refuse("a key or index without a plain name")


def _list(value: Any, refuse) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise refuse("a list of keys or indexes is not a list")
    return value


def _check_columns(key: Any, field: str, columns: list[str], refuse) -> None:
    names = key.get(field) if isinstance(key, dict) else None
    if not isinstance(names, list) or not names or any(n not in columns for n in names):
        name = key.get("name") if isinstance(key, dict) else key
        raise refuse(f"key {name!r} names a column the table does not have")
