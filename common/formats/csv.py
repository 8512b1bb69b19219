"""CSV with a header line, UTF-8: the seeds' format, what `psql \\copy ... csv header` writes."""

from __future__ import annotations

import csv
import io
from typing import BinaryIO, NamedTuple

from psycopg2 import sql


class Scan(NamedTuple):
    header: list[str] | None  # the column names the file carries, if it carries any
    rows: int
    ids: set[str] | None  # the distinct non-empty values of the scanned column


class CsvFormat:
    name = "csv"
    description = "UTF-8 CSV"
    extension = ".csv"
    header_records = 1  # COPY sends the header line as a message of its own
    trailer_records = 0
    can_split = True
    # Range-split copies ranges without the header line (`copy_to(..., header=False)`);
    # the joined file's header is a COPY of no rows, and nothing ends it.
    range_header = b""
    trailer = b""
    exact_types = False  # text: restores into any column types that parse it
    errors = (csv.Error, UnicodeDecodeError)

    def copy_to(self, source: sql.Composable, header: bool = True) -> sql.Composed:
        options = "FORMAT csv, HEADER, ENCODING 'UTF8'" if header else "FORMAT csv, ENCODING 'UTF8'"
        return sql.SQL("COPY {} TO STDOUT WITH ({})").format(source, sql.SQL(options))

    def copy_from(self, table: sql.Composable, columns: list[str]) -> sql.Composed:
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER, ENCODING 'UTF8')").format(
            table, names
        )

    def header_matches(self, stream: BinaryIO, columns: list[list[str]]) -> bool:
        return next(csv.reader(_text(stream)), []) == [c[0] for c in columns]

    def scan(self, stream: BinaryIO, columns: list[list[str]], id_column: int | None) -> Scan:
        """Header, row count and, for `id_column`, its distinct non-empty values (CSV NULL
        is empty); a value with embedded newlines is one row."""
        reader = csv.reader(_text(stream))
        header = next(reader, [])
        if id_column is None:
            return Scan(header, sum(1 for _ in reader), None)
        ids, rows = set(), 0
        for row in reader:
            rows += 1
            if id_column < len(row) and row[id_column]:
                ids.add(row[id_column])
        return Scan(header, rows, ids)


def _text(stream: BinaryIO) -> io.TextIOWrapper:
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


FORMAT = CsvFormat()
