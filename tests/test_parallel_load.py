"""Loading one file through several connections (`common/parallel_load.py`): the formats'
splitters cut only where rows end, whatever the piece size, and a file loaded through 1, 2
or 3 COPYs into a committed table holds exactly what one COPY of it loads, against real
PostgreSQL + pgvector; a bad row, a bad file or a failing read stops every COPY promptly
with one error naming the table."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import threading
import time
import uuid

import psycopg2
import pytest
from psycopg2 import sql

from common.compression import HashingReader
from common.exceptions import RestoreError
from common.formats import file_format
from common.formats.csv import CsvSplitter
from common.parallel_load import load_parallel
from common.pgbinary import HEADER, TRAILER, BinaryCopyError, csv_line

PIECES = (1, 2, 3, 5, 8, 13, 64, 1000, 1 << 20)

# Values a cut blind to quotes gets wrong: newlines, quotes and commas inside values.
AWKWARD = [
    "",
    None,
    "plain",
    "a,b,c",
    'say "hi"',
    '"',
    '""',
    '","',
    "line1\nline2",
    "\n",
    "\n\n",
    '"\n"',
    "trailing\n",
    "\r\n",
    "\\.",
    "ünïcödé ✓ 日本語 🙂",
    ",\n,",
    ' "quoted" \n "again" ',
]


def awkward_text(i: int) -> str | None:
    if i % 7 == 3:  # a long value of many lines, longer than most pieces
        return "\n".join(f'line {k}, "q{k}"' for k in range(i % 40))
    return AWKWARD[i % len(AWKWARD)]


def csv_rows(count: int) -> tuple[bytes, list[int]]:
    """A CSV file as COPY writes it, and the offset where each row starts."""
    lines = [csv_line(["id", "doc", "n"])]
    for i in range(count):
        lines.append(csv_line([str(uuid.UUID(int=i)), awkward_text(i), None if i % 4 == 0 else str(i)]))
    data = "".join(lines).encode()
    starts, at = [], 0
    for line in lines:
        at += len(line.encode())
        starts.append(at)
    return data, starts


def binary_rows(count: int, extension: bytes = b"") -> tuple[bytes, list[int], int]:
    """A binary COPY file, the offset where each tuple (and the trailer) starts, and the
    header's length."""
    rng = random.Random(count)
    header = HEADER[:15] + struct.pack(">i", len(extension)) + extension
    parts, starts, at = [header], [], len(header)
    for _ in range(count):
        starts.append(at)
        sizes = [rng.choice([-1, 0, 1, 4, 16, 300]) for _ in "abc"]
        fields = [None if size < 0 else rng.randbytes(size) for size in sizes]
        row = struct.pack(">h", 3) + b"".join(
            struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f for f in fields
        )
        parts.append(row)
        at += len(row)
    starts.append(at)
    return b"".join(parts) + TRAILER, starts, len(header)


def cut(splitter, data: bytes, piece: int) -> tuple[bytes, list[bytes], set[int]]:
    """Feed `data` to `splitter` in pieces as the dispatcher does: the header, the shares
    (rows between two cuts) and the file offsets of the cuts."""
    read, header = 0, None
    while header is None:
        read += piece
        header = splitter.head(data[:read], read >= len(data))
    offset, shares, cuts, share = header, [], set(), b""
    pending = data[header:read]
    while True:
        if pending:
            rows, rest = splitter.split(pending)
            share += rows
            offset += len(rows)
            if rest is not None:
                shares.append(share)
                cuts.add(offset)
                share, offset = rest, offset + len(rest)
        if read >= len(data):
            break
        pending, read = data[read : read + piece], read + piece
    splitter.finish()
    shares.append(share)
    return data[:header], shares, cuts


@pytest.mark.parametrize("piece", PIECES)
def test_the_csv_splitter_cuts_only_where_rows_end_whatever_the_piece_size(piece):
    data, starts = csv_rows(300)
    header, shares, cuts = cut(file_format("csv").splitter(), data, piece)
    assert header == data[: starts[0]]
    assert b"".join(shares) == data[starts[0] :]
    assert cuts <= set(starts)
    if piece == 1:  # every row ending is seen on its own
        assert cuts == set(starts[1:])


@pytest.mark.parametrize("piece", PIECES)
def test_the_binary_splitter_cuts_only_between_tuples_whatever_the_piece_size(piece):
    data, starts, head = binary_rows(300, extension=b"ext!")
    splitter = file_format("binary").splitter()
    header, shares, cuts = cut(splitter, data, piece)
    assert header == data[:head] == splitter.prologue
    assert b"".join(shares) == data[head : -len(TRAILER)]  # the file's trailer is dropped
    assert cuts <= set(starts)
    if piece == 1:
        assert cuts == set(starts)


def test_a_csv_file_of_only_a_header_has_no_rows():
    splitter = file_format("csv").splitter()
    assert splitter.head(b'id,"do\nc"', False) is None
    assert splitter.head(b'id,"do\nc"', True) == len(b'id,"do\nc"')
    assert splitter.head(b'id,"do\nc"\n1,2\n', False) == len(b'id,"do\nc"\n')


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-1], "ends in the middle of a tuple"),
        (lambda data: data[:-40], "ends in the middle of a tuple"),
        (lambda data: data + b"x", "data after the binary COPY trailer"),
        (lambda data: b"PGCOPY\n\xff\r\n\x01" + data[11:], "no PGCOPY signature"),
        (lambda data: data[:10], "ends in its header"),
    ],
)
def test_the_binary_splitter_refuses_a_damaged_file(damage, message):
    data, _, _ = binary_rows(20)
    with pytest.raises(BinaryCopyError, match=message):
        cut(file_format("binary").splitter(), damage(data), 16)


# Against PostgreSQL: a source table of awkward rows, a committed target of the same
# columns (its vector typed vector(3), so a 4-dimension vector is a bad row).

SOURCE, TARGET = "parallel_load_source", "parallel_load_target"
COLUMNS = ["id", "doc", "meta", "embedding", "n"]
TIMEOUT_S = 30


@pytest.fixture
def tables(db):
    with db.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cur.execute(f"DROP TABLE IF EXISTS {SOURCE}, {TARGET}")
        cur.execute(f"CREATE TABLE {SOURCE} (id uuid, doc text, meta jsonb, embedding vector, n integer)")
        cur.execute(f"CREATE TABLE {TARGET} (id uuid, doc text, meta jsonb, embedding vector(3), n integer)")
        rng = random.Random(7)
        cur.executemany(
            f"INSERT INTO {SOURCE} VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    str(uuid.UUID(int=i)),
                    awkward_text(i),
                    None if i % 5 == 0 else json.dumps({"i": i, "s": awkward_text(i + 1)}),
                    None if i % 11 == 0 else str([round(rng.uniform(-1, 1), 6) for _ in range(3)]),
                    None if i % 4 == 0 else i,
                )
                for i in range(400)
            ],
        )
    yield db
    with db.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {SOURCE}, {TARGET}")


def backup_file(db, fmt_name: str) -> bytes:
    out = io.BytesIO()
    with db.cursor() as cur:
        cur.copy_expert(file_format(fmt_name).copy_to(sql.Identifier(SOURCE)), out)
    return out.getvalue()


def rows_of(db, table: str) -> list[str]:
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(table)))
        return [row for (row,) in cur.fetchall()]


def one_copy(db, fmt_name: str, data: bytes) -> list[str]:
    """The target's rows after one plain COPY of `data`; the target is emptied again."""
    with db.cursor() as cur:
        cur.copy_expert(file_format(fmt_name).copy_from(sql.Identifier(TARGET), COLUMNS), io.BytesIO(data))
        rows = rows_of(db, TARGET)
        cur.execute(f"TRUNCATE {TARGET}")
    return rows


def within(seconds: float, work):
    """`work()`'s result, failing the test if it takes longer (a hang)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Loaders:
    """`jobs` connections in a transaction each, as a restore into a staging table opens them."""

    def __init__(self, services, jobs: int) -> None:
        self.connections = [psycopg2.connect(services["VECTOR_DB_URL"]) for _ in range(jobs)]

    def load(self, fmt_name: str, stream, piece: int) -> int:
        return within(
            TIMEOUT_S,
            lambda: load_parallel(
                self.connections, sql.Identifier(TARGET), COLUMNS, file_format(fmt_name), stream, piece=piece
            ),
        )

    def commit(self) -> None:
        for conn in self.connections:
            conn.commit()

    def roll_back_and_check_usable(self) -> None:
        for conn in self.connections:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
            conn.rollback()

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


@pytest.fixture
def loaders(services):
    opened: list[Loaders] = []

    def open_loaders(jobs: int) -> Loaders:
        opened.append(Loaders(services, jobs))
        return opened[-1]

    yield open_loaders
    for each in opened:
        each.close()


@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("fmt_name", ["csv", "binary"])
def test_a_file_loaded_through_several_connections_holds_what_one_copy_loads(tables, loaders, fmt_name, jobs):
    data = backup_file(tables, fmt_name)
    expected = one_copy(tables, fmt_name, data)
    assert expected == rows_of(tables, SOURCE) and len(expected) == 400
    for piece in (3, 64, 1000, 1 << 20):  # small pieces: row ends fall everywhere
        through = loaders(jobs)
        stream = HashingReader(io.BytesIO(data))
        assert through.load(fmt_name, stream, piece) == 400
        through.commit()
        assert rows_of(tables, TARGET) == expected, f"piece {piece}"
        # The file was read once, in order, to its end: the caller's hash is the file's.
        assert (stream.sha256.hexdigest(), stream.size) == (hashlib.sha256(data).hexdigest(), len(data))
        with tables.cursor() as cur:
            cur.execute(f"TRUNCATE {TARGET}")


def test_the_comparison_catches_a_cut_blind_to_quotes(tables, loaders, monkeypatch):
    """The rows above have newlines inside quotes where the cuts fall: a splitter that
    cuts at any newline breaks the load, so the test above would see it."""

    def blind(self, data):
        newline = data.rfind(b"\n")
        return (data, None) if newline < 0 else (data[: newline + 1], data[newline + 1 :])

    monkeypatch.setattr(CsvSplitter, "split", blind)
    data = backup_file(tables, "csv")
    through = loaders(2)
    try:
        through.load("csv", io.BytesIO(data), 64)
        through.commit()
    except RestoreError:
        through.roll_back_and_check_usable()
    assert rows_of(tables, TARGET) != rows_of(tables, SOURCE)


def bad_vector_in_the_middle(db) -> None:
    with db.cursor() as cur:
        cur.execute(f"UPDATE {SOURCE} SET embedding = '[1,2,3,4]' WHERE id = %s", (str(uuid.UUID(int=200)),))


@pytest.mark.parametrize("fmt_name", ["csv", "binary"])
def test_a_bad_row_in_the_middle_stops_every_copy_with_one_error_naming_the_table(tables, loaders, fmt_name):
    bad_vector_in_the_middle(tables)
    through = loaders(3)
    with pytest.raises(RestoreError, match=rf"{TARGET}: .*expected 3 dimensions, not 4"):
        through.load(fmt_name, io.BytesIO(backup_file(tables, fmt_name)), 512)
    through.roll_back_and_check_usable()
    assert rows_of(tables, TARGET) == []


def test_a_bad_uuid_in_a_csv_file_is_refused_with_postgresql_s_words(tables, loaders):
    data = backup_file(tables, "csv").replace(str(uuid.UUID(int=250)).encode(), b"not-a-uuid", 1)
    through = loaders(2)
    with pytest.raises(RestoreError, match=rf"{TARGET}: .*invalid input syntax for type uuid"):
        through.load("csv", io.BytesIO(data), 256)
    through.roll_back_and_check_usable()


class EndsOnceCopiesWaitForALock(io.RawIOBase):
    """`data`, whose end is read only once `count` COPYs wait for a lock (seen by `watcher`)."""

    def __init__(self, data: bytes, watcher, count: int) -> None:
        self._data, self._watcher, self._count = data, watcher, count

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._data:
            deadline = time.monotonic() + TIMEOUT_S
            while copies_waiting_for_a_lock(self._watcher) < self._count:
                assert time.monotonic() < deadline, "the COPYs never waited for the lock"
                time.sleep(0.05)
        chunk, self._data = self._data[: len(buffer)], self._data[len(buffer) :]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def copies_waiting_for_a_lock(conn) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COPY%%'"
        )
        return cur.fetchone()[0]


def test_a_damaged_file_ends_copies_that_wait_for_a_lock(tables, loaders, services):
    """The loaders' COPYs wait for a lock, reading nothing, when the file turns out
    damaged: they are cancelled in the server rather than waited for."""
    data = backup_file(tables, "binary")[:-5]
    holder = psycopg2.connect(services["VECTOR_DB_URL"])
    try:
        with holder.cursor() as cur:
            cur.execute(f"LOCK TABLE {TARGET} IN ACCESS EXCLUSIVE MODE")
        through = loaders(2)
        started = time.monotonic()
        with pytest.raises(RestoreError, match=rf"{TARGET}: .*ends in the middle of a tuple"):
            through.load("binary", EndsOnceCopiesWaitForALock(data, tables, 2), 1 << 20)
        assert time.monotonic() - started < 10
        assert copies_waiting_for_a_lock(tables) == 0  # still locked: they were cancelled
        through.roll_back_and_check_usable()
    finally:
        holder.close()


class FailingRead(io.RawIOBase):
    def __init__(self, data: bytes, fail_at: int) -> None:
        self._data, self._fail_at, self._at = data, fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._at >= self._fail_at:
            raise OSError("the backup disk went away")
        chunk = self._data[self._at : self._at + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


def test_a_failing_read_stops_every_copy(tables, loaders):
    data = backup_file(tables, "csv")
    through = loaders(3)
    with pytest.raises(RestoreError, match=rf"{TARGET}: .*the backup disk went away"):
        through.load("csv", FailingRead(data, len(data) // 2), 300)
    through.roll_back_and_check_usable()
    assert rows_of(tables, TARGET) == []


@pytest.mark.parametrize("fmt_name", ["csv", "binary"])
def test_a_file_without_rows_loads_none(tables, loaders, fmt_name):
    with tables.cursor() as cur:
        cur.execute(f"TRUNCATE {SOURCE}")
    through = loaders(2)
    assert through.load(fmt_name, io.BytesIO(backup_file(tables, fmt_name)), 64) == 0
    through.commit()
