"""PostgreSQL's binary COPY format (`{table}_{timestamp}.pgcopy`): what the server sends
and reads fastest, several times faster than CSV for vectors (no float text to format
or parse). It carries no column names: the manifest's columns and types describe it, and
it restores only into columns of exactly those types.
"""

from __future__ import annotations

from typing import BinaryIO

from psycopg2 import sql

from common.formats.csv import Scan
from common.pgbinary import HEADER, SIGNATURE, TRAILER, BinaryCopyError, decoder, read_tuples


class BinaryFormat:
    name = "binary"
    description = "PostgreSQL binary COPY"
    extension = ".pgcopy"
    # The 19-byte header comes glued to the first row's message; the trailer is a
    # message of its own (one message of both when there is no row).
    header_records = 0
    trailer_records = 1
    can_split = True
    # Every COPY, a range's too, starts with the 19-byte header and ends with the
    # trailer; a file joined from ranges carries each once.
    range_header = HEADER
    trailer = TRAILER
    exact_types = True
    errors = (BinaryCopyError, UnicodeDecodeError)

    def copy_to(self, source: sql.Composable, header: bool = True) -> sql.Composed:
        """Always with its header: binary COPY has no option to leave it out."""
        return sql.SQL("COPY {} TO STDOUT WITH (FORMAT binary)").format(source)

    def copy_from(self, table: sql.Composable, columns: list[str]) -> sql.Composed:
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(table, names)

    def header_matches(self, stream: BinaryIO, columns: list[list[str]]) -> bool:
        return stream.read(len(SIGNATURE)) == SIGNATURE

    def scan(self, stream: BinaryIO, columns: list[list[str]], id_column: int | None) -> Scan:
        """Every tuple parsed (field counts, lengths, the trailer); the row count and the
        id column's distinct values as PostgreSQL prints them."""
        decode = decoder(columns[id_column][1]) if id_column is not None else None
        rows, ids = 0, set()
        for row in read_tuples(stream, len(columns)):
            rows += 1
            if decode is not None and row[id_column] is not None:
                ids.add(decode(row[id_column]))
        return Scan(None, rows, ids if decode is not None else None)


FORMAT = BinaryFormat()
