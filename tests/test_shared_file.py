"""`common.shared_file` on the machine's own filesystem: rows appended by several processes
at once through `appender` stay whole, even rows larger than a block; the tail hasher's
sha256 is the finished file's; network and unknown filesystems are not appended to."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
from pathlib import Path

from common.shared_file import BLOCK, TailHasher, appender, appends_safely, filesystem_type

WRITERS = "abc"


def row_sizes() -> list[int]:
    rng = random.Random(7)
    sizes = [rng.randint(1, 3000) for _ in range(3000)]
    return [*sizes, BLOCK + BLOCK // 2, 3 * BLOCK, *sizes[:500]]


def row(who: str, i: int, size: int) -> bytes:
    return f"{who}-{i}-".encode() + b"x" * size


def append_rows(path: Path, who: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        with appender(fd) as out:
            for i, size in enumerate(row_sizes()):
                out.write(row(who, i, size) + b"\n")  # one write per row, as COPY hands them over
    finally:
        os.close(fd)


def append_from_processes(path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=append_rows, args=(path, who)) for who in WRITERS]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0


def test_rows_appended_by_several_processes_at_once_stay_whole(tmp_path):
    path = tmp_path / "shared.csv"
    path.write_bytes(b"")

    append_from_processes(path)

    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    expected = [row(who, i, size) for who in WRITERS for i, size in enumerate(row_sizes())]
    assert sorted(lines) == sorted(expected)
    # The writers' blocks did meet in the file: not one writer's rows after another's.
    assert len({line[:1] for line in lines[: len(lines) // 2]}) > 1


def test_the_tail_hasher_hashes_the_whole_file_while_others_append(tmp_path):
    path = tmp_path / "shared.csv"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        tail = TailHasher(fd)
        append_from_processes(path)
        digest = tail.finish()
    finally:
        os.close(fd)

    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tail.size == path.stat().st_size > 3 * 3 * BLOCK


def test_only_local_filesystems_are_appended_to_by_several_processes(tmp_path):
    assert filesystem_type("/proc/self") == "proc"
    assert appends_safely(tmp_path)  # a local disk or tmpfs
    assert not appends_safely("/proc/self")
