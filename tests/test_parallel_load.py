"""Loading one file through several connections (`common/parallel_load.py`): the formats'
splitters cut only where rows end, whatever the piece size, and a file loaded through 1, 2
or 3 COPYs into a committed table holds exactly what one COPY of it loads, against real
PostgreSQL + pgvector; a bad row, a bad file or a failing read stops every COPY promptly
with one error naming the table."""

from __future__ import annotations

import random
import struct
import uuid

import pytest

from common.formats import file_format
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
