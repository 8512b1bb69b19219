"""LangChain PGVector schemas and seed data, for the demo and the tests.

Two schemas exist in the wild: langchain-postgres (`id varchar` primary key, JSONB
metadata) and the older langchain_community one (`uuid` primary key, `custom_id`, JSON).
"""

from __future__ import annotations

import json
import uuid

from psycopg2.extensions import connection as Connection

SCHEMAS = {
    "langchain_postgres": """
        CREATE TABLE langchain_pg_collection (
            uuid UUID PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            cmetadata JSON
        );
        CREATE TABLE langchain_pg_embedding (
            id VARCHAR PRIMARY KEY,
            collection_id UUID REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
            embedding VECTOR,
            document VARCHAR,
            cmetadata JSONB
        );
        CREATE INDEX ix_cmetadata_gin ON langchain_pg_embedding
            USING gin (cmetadata jsonb_path_ops);
    """,
    "langchain_community": """
        CREATE TABLE langchain_pg_collection (
            name VARCHAR,
            cmetadata JSON,
            uuid UUID PRIMARY KEY
        );
        CREATE TABLE langchain_pg_embedding (
            collection_id UUID REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
            embedding VECTOR,
            document VARCHAR,
            cmetadata JSON,
            custom_id VARCHAR,
            uuid UUID PRIMARY KEY
        );
    """,
}

# Values that break naive CSV handling: every one must survive a round trip.
AWKWARD_DOCUMENTS = [
    None,
    "",
    "plain text",
    "unicode: 中文 ✓ émigré 🚀",
    'a "quoted" word',
    "commas, inside, here",
    "line one\nline two\r\nline three",
    "backslash \\ and \\N and \\.",
    "\\.",
    "   leading and trailing spaces   ",
]
AWKWARD_METADATA = [
    None,
    {},
    {"source": "a.md", "page": 3},
    {"text": 'quote " comma , newline \n tab \t', "nested": {"list": [1, 2.5, None, True]}},
    {"unicode": "中文 🚀"},
]


def create_store(conn: Connection, kind: str, schema: str = "public") -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}, public")
        cur.execute(SCHEMAS[kind])
        cur.execute("SET search_path TO DEFAULT")


def drop_store(conn: Connection, schema: str = "public") -> None:
    with conn.cursor() as cur:
        cur.execute(
            f"DROP TABLE IF EXISTS {schema}.langchain_pg_embedding, {schema}.langchain_pg_collection CASCADE"
        )


def add_collection(conn: Connection, kind: str, name: str, schema: str = "public") -> str:
    collection_id = str(uuid.uuid4())
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {schema}.langchain_pg_collection (uuid, name, cmetadata) VALUES (%s, %s, %s)",
            (collection_id, name, json.dumps({"owner": "tests", "note": 'a, "b"\n'})),
        )
    return collection_id


def add_awkward_rows(conn: Connection, kind: str, collection_id: str, schema: str = "public") -> int:
    """Insert one row per awkward document, cycling metadata and NULL/non-NULL vectors."""
    rows = 0
    with conn.cursor() as cur:
        for i, document in enumerate(AWKWARD_DOCUMENTS):
            metadata = AWKWARD_METADATA[i % len(AWKWARD_METADATA)]
            meta = None if metadata is None else json.dumps(metadata, ensure_ascii=False)
            vector = None if i == 1 else f"[{i}.5,-2.5e-07,3.14159,{1e20 if i % 2 else 0}]"
            key = str(uuid.uuid4())
            if kind == "langchain_postgres":
                cur.execute(
                    f"INSERT INTO {schema}.langchain_pg_embedding "
                    "(id, collection_id, embedding, document, cmetadata) VALUES (%s, %s, %s, %s, %s)",
                    (key, collection_id, vector, document, meta),
                )
            else:
                cur.execute(
                    f"INSERT INTO {schema}.langchain_pg_embedding "
                    "(uuid, collection_id, embedding, document, cmetadata, custom_id) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (key, collection_id, vector, document, meta, None if i % 3 else f"custom,{i}"),
                )
            rows += 1
    return rows


def add_bulk_rows(
    conn: Connection,
    kind: str,
    collection_id: str,
    count: int,
    dim: int = 8,
    schema: str = "public",
    random_vectors: bool = False,
) -> None:
    """`count` generated rows with `dim`-dimensional vectors, inserted server-side.

    `random_vectors` gives each row its own random components, like real embeddings
    (they cost the same to format, but compress as real ones do); the default repeats.
    """
    vector = f"array_fill(mod(g, 97)::real / 7, ARRAY[{dim}])::vector"
    if random_vectors:  # the reference to `g` makes PostgreSQL evaluate the subquery per row
        vector = f"(SELECT array_agg((random() + 0 * g * i)::real) FROM generate_series(1, {dim}) i)::vector"
    key = "id" if kind == "langchain_postgres" else "uuid"
    key_value = "'row-' || g" if kind == "langchain_postgres" else "gen_random_uuid()"
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {schema}.langchain_pg_embedding "
            f"({key}, collection_id, embedding, document, cmetadata) "
            f"SELECT {key_value}, %s, {vector}, 'document ' || g, "
            f"json_build_object('n', g)::{'jsonb' if kind == 'langchain_postgres' else 'json'} "
            "FROM generate_series(1, %s) AS g",
            (collection_id, count),
        )
        cur.execute(f"ANALYZE {schema}.langchain_pg_embedding")


def row_texts(conn: Connection, table: str) -> list[str]:
    """Every row as PostgreSQL's text form, sorted: equal lists mean equal contents."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT r::text FROM {table} AS r ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


def count_rows(conn: Connection, table: str) -> int:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]
