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

    def copy_from(self, table: sql.Composable, columns: list[str], header: bool = True) -> sql.Composed:
        """The COPY reading this format; `header=False` for rows without the header line (a
        parallel load's share of a file, see `splitter`)."""
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        options = "FORMAT csv, HEADER, ENCODING 'UTF8'" if header else "FORMAT csv, ENCODING 'UTF8'"
        return sql.SQL("COPY {} ({}) FROM STDIN WITH ({})").format(table, names, sql.SQL(options))

    def splitter(self) -> CsvSplitter:
        """Finds record boundaries in a file read once, for a load through several COPYs."""
        return CsvSplitter()

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


class CsvSplitter:
    """Where a CSV file may be cut between rows: at a newline outside quotes. Every `"`
    toggles the quote state (an escaped `""` twice), as PostgreSQL's own CSV line reader
    counts them, so a newline is between rows when the quotes before it are even.

    One per file: `head` on the file's start, then `split` on each following piece in order,
    then `finish`.
    Each COPY of a share gets `prologue`, its rows, then `epilogue` (nothing, for CSV)."""

    prologue = b""
    epilogue = b""

    def __init__(self) -> None:
        self._quoted = False  # inside quotes where the next piece starts

    def head(self, data: bytes, final: bool) -> int | None:
        """The length of the header line at the start of `data` (None: it goes on past
        `data`, unless `final`: the file is nothing but a header)."""
        start, quotes = 0, 0
        while (newline := data.find(b"\n", start)) >= 0:
            quotes += data.count(b'"', start, newline)
            if not quotes & 1:
                return newline + 1
            start = newline + 1
        return len(data) if final else None

    def split(self, data: bytes) -> tuple[bytes, bytes | None]:
        """The next piece of the file cut at its last row boundary: (what continues the
        rows before it, what starts at it), or (`data`, None) when no row ends in `data`."""
        quoted = self._quoted ^ bool(data.count(b'"') & 1)
        self._quoted, end = quoted, len(data)
        while (newline := data.rfind(b"\n", 0, end)) >= 0:
            quoted ^= bool(data.count(b'"', newline, end) & 1)
            if not quoted:
                return data[: newline + 1], data[newline + 1 :]
            end = newline
        return data, None

    def finish(self) -> None:
        """The file has ended (an unterminated quoted value is COPY's to report)."""


def _text(stream: BinaryIO) -> io.TextIOWrapper:
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


FORMAT = CsvFormat()
