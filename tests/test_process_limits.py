"""Process-level limits: constant memory at any table size, and a full disk mid-copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEAK_RSS_OF_ONE_BACKUP = """
import resource, sys
from pathlib import Path
import psycopg2
from common.backup import backup_table
from common.table_job import TableJob
from common.config import VectorTableManagement
conn = psycopg2.connect(sys.argv[1])
result = backup_table(conn, TableJob(sys.argv[2], Path(sys.argv[3]), "ts", VectorTableManagement()))
print(result["file_size_bytes"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(url: str, table: str, directory: Path) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_ONE_BACKUP, url, table, str(directory)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_table_size(db, tmp_path, services):
    with db.cursor() as cur:
        for name, rows in (("mem_small", 5_000), ("mem_big", 250_000)):
            cur.execute(
                f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int, embedding vector(32), doc text);"
                f"INSERT INTO {name} SELECT g, array_fill(g::real / 3, ARRAY[32])::vector, 'd' || g "
                "FROM generate_series(1, %s) g",
                (rows,),
            )
    try:
        small_bytes, small_rss = peak_rss(services["VECTOR_DB_URL"], "mem_small", tmp_path / "s")
        big_bytes, big_rss = peak_rss(services["VECTOR_DB_URL"], "mem_big", tmp_path / "b")
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE mem_small, mem_big")

    growth = big_rss - small_rss
    # The big file is far larger than the allowed growth, so buffering it would fail this.
    assert big_bytes - small_bytes > 60 * 2**20
    assert growth < 20 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB"


BACKUP_WITH_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import psycopg2
from common.backup import run_table_backup
from common.table_job import TableJob
from common.config import VectorTableManagement, load_settings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
target = load_settings().database
result = run_table_backup(target, TableJob(sys.argv[1], Path(sys.argv[2]), "ts", VectorTableManagement()))
print(result.get("error", "no error"))
"""


def test_a_full_disk_mid_copy_is_a_clear_error_and_leaves_nothing(db, tmp_path, services):
    with db.cursor() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS full_disk; CREATE TABLE full_disk (id int, embedding vector(32));"
            "INSERT INTO full_disk SELECT g, array_fill(g::real, ARRAY[32])::vector "
            "FROM generate_series(1, 50000) g"
        )
    try:
        out = subprocess.run(
            [sys.executable, "-c", BACKUP_WITH_FILE_SIZE_LIMIT, "full_disk", str(tmp_path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE full_disk")
    assert "full_disk: file error while copying: [Errno 27] File too large" in out
    assert list(tmp_path.iterdir()) == []
