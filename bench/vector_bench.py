"""`make bench`: this project's backup and restore against `psql \\copy`, in one run.

Every figure is a ratio to `psql \\copy` measured in the same run on the same table
(the machines are small and noisy; absolute times mean little). Methods:

- `psql \\copy` (the baseline) and `pg_dump --data-only -t`, both PostgreSQL 16 client
  tools from pgserver;
- the seeds' way: a named cursor with `itersize` 10,000 and `csv.writer`;
- this project's single-stream backup, through a real `celery -A worker worker`, with
  progress, sha256 and fsync (the whole chain: dispatch, both tables, chord join);
- this project's range-split backup, the same way with two header tasks for the
  embedding table (a worker with two pool processes), against its ceiling: two `psql
  \\copy` processes on the table's two TID halves;
- restore: `python -m worker restore`'s engine (verify, then COPY FROM) against
  `psql \\copy FROM`, both into empty tables with the same indexes;
- restore into a live store with HNSW and GIN indexes, against both ways by hand, and
  the longest wait of a concurrent search meanwhile (`bench/indexed_restore.py`);
- S3: the single-stream and binary backups through a worker started with
  `VECTOR_STORAGE_URL=s3://…` (moto's server, or `BENCH_S3_URL`) against the local
  directory, and the restore from each (`bench/s3_phase.py`; `--workload s3` alone);
- memory: peak RSS of one table backup at 10k and at 1M rows;
- chain overhead: a run on empty tables.

Results go to `bench/RESULTS.md` (docs/performance.md quotes it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
TABLE = "langchain_pg_embedding"
HALVES = "two psql \\copy on TID halves"
SINGLE = "this project, single stream"
SPLIT = "this project, range-split, 2 workers"
BINARY = "this project, binary format"
# Issue 17's targets for the binary format: backup (whole chain) and restore, each
# against `psql \copy` CSV in the same run.
BINARY_TARGETS = {"wide": (3.0, 4.0), "narrow": (1.6, 2.5)}
RESTORE_JOBS = 2  # issue 17: CSV restore with 2 loaders ≥ 1.5× psql \copy FROM (wide)
WORKLOADS = {"wide": (20_000, 1536), "narrow": (1_000_000, 16)}


@dataclass
class Timing:
    method: str
    seconds: float
    rows: int
    bytes: int
    target: float | None = None  # minimum ratio to psql \copy

    def ratio(self, baseline: Timing) -> float:
        return baseline.seconds / self.seconds

    def line(self, baseline: Timing) -> str:
        ratio = self.ratio(baseline)
        verdict = "" if self.target is None else ("PASS" if ratio >= self.target else "FAIL")
        target = "" if self.target is None else f"≥ {self.target:.2f}×"
        return (
            f"| {self.method} | {self.seconds:.2f} s | {self.rows / self.seconds:,.0f} | "
            f"{self.bytes / self.seconds / 1e6:,.0f} | {ratio:.2f}× | {target} | {verdict} |"
        )


def median_time(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


TICK = os.sysconf("SC_CLK_TCK")


def busy_cpu() -> tuple[float, float]:
    """CPU-seconds used so far on this machine (idle, iowait and steal left out) and,
    of those, by PostgreSQL processes: a run can take no less than its share of the
    first over the number of cores."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    server = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                name, fields = f.read().rsplit(")", 1)
            if name.endswith("(postgres"):
                server += sum(map(int, fields.split()[11:15]))  # utime stime cutime cstime
        except OSError:
            pass  # a process that ended meanwhile
    return (user + nice + system + irq + softirq) / TICK, server / TICK


@dataclass
class Usage:
    """One method's median wall time and CPU, in seconds, over its repetitions."""

    wall: float
    busy: float
    server: float

    def line(self, method: str, baseline: float) -> str:
        best = baseline / (self.busy / os.cpu_count())
        return (
            f"| {method} | {self.wall:.2f} s | {self.busy:.2f} | {self.server:.2f} | "
            f"{self.busy - self.server:.2f} | {best:.2f}× |"
        )


def pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def seed(url: str, rows: int, dim: int) -> None:
    from worker.sample_store import add_bulk_rows, add_collection, create_store, drop_store

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        drop_store(conn)
        create_store(conn, "langchain_postgres")
        collection = add_collection(conn, "langchain_postgres", "bench")
        add_bulk_rows(conn, "langchain_postgres", collection, rows, dim=dim, random_vectors=True)
        with conn.cursor() as cur:
            cur.execute(f"VACUUM ANALYZE {TABLE}")
    finally:
        conn.close()


def psql_copy_out(url: str, out: Path) -> None:
    command = f"\\copy {TABLE} TO '{out}' WITH (FORMAT csv, HEADER)"
    subprocess.run([pg_bin("psql"), "-X", "-q", "-d", url, "-c", command], check=True)


def psql_copy_halves(url: str, scratch: Path) -> None:
    """The ceiling the issue names: two `psql \\copy` processes on the table's two TID halves."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(f"SELECT pg_relation_size('{TABLE}') / current_setting('block_size')::int")
        middle = cur.fetchone()[0] // 2
    conn.close()
    halves = [f"ctid < '({middle},0)'", f"ctid >= '({middle},0)'"]
    commands = [
        f"\\copy (SELECT * FROM {TABLE} WHERE {where}) TO '{scratch}/half{i}.csv' WITH (FORMAT csv)"
        for i, where in enumerate(halves)
    ]
    running = [subprocess.Popen([pg_bin("psql"), "-X", "-q", "-d", url, "-c", c]) for c in commands]
    if any(p.wait() for p in running):
        raise RuntimeError("psql \\copy of a half failed")


def pg_dump_data(url: str, out: Path) -> None:
    subprocess.run([pg_bin("pg_dump"), "--data-only", "-t", TABLE, "-f", str(out), "-d", url], check=True)


def seeds_way(url: str, out: Path) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor(name="seeds_way") as cur, open(out, "w", newline="", encoding="utf-8") as f:
            cur.itersize = 10_000
            cur.execute(f"SELECT * FROM {TABLE}")
            writer = csv.writer(f)
            first = True
            for row in cur:
                if first:
                    writer.writerow([d.name for d in cur.description])
                    first = False
                writer.writerow(row)
    finally:
        conn.close()


def compressed_backup(url: str, scratch: Path, compression: str) -> dict:
    """One table backup by the engine (no worker), compressed; a fresh directory each time."""
    from common.backup import backup_table
    from common.config import VectorTableManagement
    from common.table_job import TableJob

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        directory = Path(tempfile.mkdtemp(prefix="packed_", dir=scratch))
        job = TableJob(TABLE, directory, "bench", VectorTableManagement(compression=compression))
        return backup_table(conn, job)
    finally:
        conn.close()


def chain_backup(split_workers: int = 1, storage: str | None = None) -> dict:
    """A backup-only run through the real worker; returns its result dict.

    `split_workers` header tasks share the embedding table (1: a single stream). `storage`
    (`s3://bucket/prefix`) is where the set goes, else the task root; the client reads it
    too (it reserves the set's timestamp there), so it must match the worker's.
    """
    from tasks.pipeline import enqueue_vector_management, run_record, run_result

    os.environ["VECTOR_SPLIT_WORKERS"] = str(split_workers)
    set_storage(os.environ, storage)
    run_id = enqueue_vector_management(None, backup=True)["run_id"]
    record = run_record(run_id)
    result = run_result(record).get(timeout=3600)
    if split_workers > 1 and result["tables_backed_up"][TABLE]["row_count"]:
        from celery.result import AsyncResult

        shares = [AsyncResult(task_id).result for task_id, t in record["tables"].items() if t == TABLE]
        say(
            "range-split shares: "
            + ", ".join(
                f"{'helper' if s.get('part') else 'holder'} {s['row_count']:,} rows in {s['duration']:.2f} s"
                for s in shares
            )
        )
    return result


def set_storage(env, storage: str | None) -> None:
    """`VECTOR_STORAGE_URL` in `env` set to `storage`, or removed: a local run must not go
    to a storage URL the caller's environment happens to name."""
    if storage:
        env["VECTOR_STORAGE_URL"] = storage
    else:
        env.pop("VECTOR_STORAGE_URL", None)


def discard_set(result: dict) -> None:
    """Delete a set's files, in a local directory or an s3:// one."""
    from common.storage import open_storage

    storage = open_storage(result["backup_directory"])
    names = [t["backup_file"] for t in result["tables_backed_up"].values()] + [result["manifest"]]
    for name in names:
        storage.delete(name)


def restore_database(url: str) -> str:
    """A scratch database beside `url`'s, empty, for restores."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS bench_restore")
        cur.execute("CREATE DATABASE bench_restore")
    conn.close()
    from psycopg2.extensions import make_dsn, parse_dsn

    return make_dsn(**{**parse_dsn(url), "dbname": "bench_restore"})


def drop_restored(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}, langchain_pg_collection CASCADE")
    conn.close()


def psql_copy_in(dsn: str, schema: dict, csv_file: Path) -> None:
    """The baseline restore: the same table, keys and indexes, then `\\copy FROM`."""
    from common.table_schema import create_statements

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        columns = [c["name"] for c in schema["columns"]]
        tables = (TABLE, "langchain_pg_collection")
        made = create_statements(conn, TABLE, schema, columns, tables)
        create, later = made.create, made.indexes + made.keys
        for statement in [create, *later]:
            cur.execute(statement)
    conn.close()
    command = f"\\copy {TABLE} FROM '{csv_file}' WITH (FORMAT csv, HEADER)"
    subprocess.run([pg_bin("psql"), "-X", "-q", "-d", dsn, "-c", command], check=True)


def project_restore(dsn: str, directory: Path | str) -> None:
    """`restore_set` of a manifest: a path, or an s3:// URL."""
    from common.db import DatabaseTarget, connect
    from common.restore import restore_set

    target = DatabaseTarget.from_url(_as_url(dsn))
    conn = connect(target)
    try:
        restore_set(conn, directory, jobs=RESTORE_JOBS, connect=lambda: connect(target))
    finally:
        conn.close()


def _as_url(dsn: str) -> str:
    from psycopg2.extensions import parse_dsn

    p = parse_dsn(dsn)
    return f"postgresql://{p.get('user', 'postgres')}@/{p['dbname']}?host={p.get('host', '')}"


PEAK_RSS = """
import resource, sys
from pathlib import Path
import psycopg2
from common.backup import backup_table
from common.table_job import TableJob
from common.config import VectorTableManagement
conn = psycopg2.connect(sys.argv[1]); conn.autocommit = True
backup_table(conn, TableJob(sys.argv[2], Path(sys.argv[3]), "rss", VectorTableManagement()))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(url: str, rows: int, scratch: Path) -> int:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS rss_probe; CREATE TABLE rss_probe AS SELECT g AS id, "
            "array_fill(g::real / 3, ARRAY[16])::vector AS embedding, 'd' || g AS doc "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
    conn.close()
    directory = scratch / f"rss_{rows}"
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, url, "rss_probe", str(directory)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def measure(url: str, scratch: Path, name: str, rows: int, dim: int, repeat: int, workers) -> list[str]:
    workers.use("csv")
    say(f"{name}: seeding {rows:,} rows x {dim} dims")
    seed(url, rows, dim)
    out = scratch / "out.csv"
    psql_copy_out(url, out)  # warm the cache once
    os.sync()  # the seeding's writes too
    size = out.stat().st_size
    dump = scratch / "dump.sql"
    results: list[dict] = []
    split: list[dict] = []
    binary: list[dict] = []
    packed: dict[str, dict] = {}
    methods = {
        "psql \\copy": lambda: psql_copy_out(url, out),
        "pg_dump --data-only -t": lambda: pg_dump_data(url, dump),
        HALVES: lambda: psql_copy_halves(url, scratch),
        f"{SINGLE} (whole chain)": lambda: results.append(chain_backup()),
        f"{SPLIT} (whole chain)": lambda: split.append(chain_backup(split_workers=2)),
        "zstd": lambda: packed.update(zstd=compressed_backup(url, scratch, "zstd")),
        "gzip": lambda: packed.update(gzip=compressed_backup(url, scratch, "gzip")),
    }
    # Interleaved: every repetition runs each method once, so a slow spell of the machine
    # hits all of them rather than one method's repeats.
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    for _ in range(repeat):
        for method, run in methods.items():
            before = busy_cpu()
            times[method].append(median_time(run, 1))
            cpu[method].append(tuple(after - b for after, b in zip(busy_cpu(), before, strict=True)))
            # Untimed: what earlier runs wrote goes, as psql's output is overwritten, and
            # the disk is drained, so no method pays for writing back another's files
            # (the backups fsync theirs; the newest set stays for the restore below).
            for done in results[:-1] + split:
                discard_set(done)
            for directory in scratch.glob("packed_*"):
                shutil.rmtree(directory)
            os.sync()
    median = {m: statistics.median(t) for m, t in times.items()}
    say(f"{name}: " + "; ".join(f"{m} {[round(x, 2) for x in t]}" for m, t in times.items()))

    def timing(method: str, seconds: float, target: float | None = None) -> Timing:
        return Timing(method, seconds, rows, size, target)

    def table_time(runs: list[dict]) -> float:
        return statistics.median(r["tables_backed_up"][TABLE]["duration"] for r in runs)

    baseline = timing("psql \\copy", median["psql \\copy"])
    timings = [
        baseline,
        timing("pg_dump --data-only -t", median["pg_dump --data-only -t"]),
        timing(f"{HALVES} (the ceiling)", median[HALVES]),
        timing("seeds' way (itersize + csv.writer)", median_time(lambda: seeds_way(url, out), 1)),
        timing(f"{SINGLE} (whole chain)", median[f"{SINGLE} (whole chain)"], target=0.97),
        timing(f"{SINGLE} (the table task)", table_time(results), target=0.97),
        timing(f"{SPLIT} (whole chain)", median[f"{SPLIT} (whole chain)"], target=1.4),
        timing(f"{SPLIT} (the table)", table_time(split), target=1.4),
    ]
    for compression in ("zstd", "gzip"):
        smaller = size / packed[compression]["file_size_bytes"]
        label = f"this project, {compression} (engine; file {smaller:.1f}× smaller)"
        timings.append(timing(label, median[compression]))
    lines = [f"### {name}: {rows:,} rows × {dim} dims, {size / 1e6:,.0f} MB of CSV", ""]
    lines += [
        "| method | time (median) | rows/s | MB/s | vs psql \\copy | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [t.line(baseline) for t in timings]
    ceiling = median[HALVES]
    lines += [
        "",
        f"Range-split, whole chain, against its ceiling (two `psql \\copy` on TID halves, "
        f"which neither hash nor fsync): {ceiling / median[f'{SPLIT} (whole chain)']:.0%}.",
    ]

    usage = {
        m: Usage(median[m], statistics.median(c[0] for c in cpu[m]), statistics.median(c[1] for c in cpu[m]))
        for m in (baseline.method, HALVES, f"{SINGLE} (whole chain)", f"{SPLIT} (whole chain)")
    }
    lines += [
        "",
        f"Where the time goes: CPU-seconds per run (medians) on the whole machine, of which "
        f"PostgreSQL's. With every one of the {os.cpu_count()} cores busy throughout, a run "
        f"could take no less than its CPU-seconds over {os.cpu_count()}: the last column is "
        f"the ratio to `psql \\copy` that this bound allows.",
        "",
        "| method | time | CPU-s | PostgreSQL | client and the rest | best ratio the cores allow |",
        "|---|---|---|---|---|---|",
    ]
    lines += [u.line(m, baseline.seconds) for m, u in usage.items()]

    lines += binary_phase(url, out, name, repeat, workers, binary, timing)

    say(f"{name}: restore")
    newest = Path(results[-1]["backup_directory"])
    manifest = json.loads((newest / results[-1]["manifest"]).read_text())
    restore_dsn = restore_database(url)

    def baseline_restore():
        drop_restored(restore_dsn)
        psql_copy_in(
            restore_dsn, manifest["tables"][TABLE]["schema"], newest / manifest["tables"][TABLE]["file"]
        )

    def ours():
        drop_restored(restore_dsn)
        project_restore(restore_dsn, newest / results[-1]["manifest"])

    binary_set = Path(binary[-1]["backup_directory"]) / binary[-1]["manifest"]

    def ours_binary():
        drop_restored(restore_dsn)
        project_restore(restore_dsn, binary_set)

    copy_in = timing("psql \\copy FROM", median_time(baseline_restore, repeat))
    restore = timing(
        f"this project's restore ({RESTORE_JOBS} loaders, staging, swap)",
        median_time(ours, repeat),
        target=1.5 if name == "wide" else 0.9,
    )
    binary_restore = timing(
        "this project's restore of the binary set",
        median_time(ours_binary, repeat),
        target=BINARY_TARGETS.get(name, (None, None))[1],
    )
    lines += [
        "",
        "| restore | time (median) | rows/s | MB/s | vs psql \\copy FROM | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [copy_in.line(copy_in), restore.line(copy_in), binary_restore.line(copy_in), ""]
    return lines


def binary_phase(url: str, out: Path, name: str, repeat: int, workers, binary: list, timing) -> list[str]:
    """The binary format through a worker started with VECTOR_BACKUP_FORMAT=binary,
    interleaved with `psql \\copy` (CSV) measured again in this phase."""
    workers.use("binary")
    say(f"{name}: binary format")
    discard_set(chain_backup())  # warm-up of the new worker: imports, connections
    methods = {"psql \\copy": lambda: psql_copy_out(url, out), BINARY: lambda: binary.append(chain_backup())}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeat):
        for method, run in methods.items():
            times[method].append(median_time(run, 1))
            for done in binary[:-1]:
                discard_set(done)
            os.sync()
    say(f"{name}: " + "; ".join(f"{m} {[round(x, 2) for x in t]}" for m, t in times.items()))
    baseline = timing("psql \\copy (CSV), this phase", statistics.median(times["psql \\copy"]))
    target = BINARY_TARGETS.get(name, (None, None))[0]
    ours = timing(f"{BINARY} (whole chain)", statistics.median(times[BINARY]), target=target)
    table = statistics.median(r["tables_backed_up"][TABLE]["duration"] for r in binary)
    smaller = binary[-1]["tables_backed_up"][TABLE]["file_size_bytes"]
    return [
        "",
        f"Binary format (`VECTOR_BACKUP_FORMAT=binary`, a worker started with it; the file is "
        f"{out.stat().st_size / smaller:.1f}× smaller than the CSV):",
        "",
        "| method | time (median) | rows/s | MB/s | vs psql \\copy | target | |",
        "|---|---|---|---|---|---|---|",
        baseline.line(baseline),
        ours.line(baseline),
        timing(f"{BINARY} (the table task)", table, target=target).line(baseline),
    ]


class Workers:
    """One `celery -A worker worker -c 2` at a time, started with the file format and the
    storage asked for (a worker reads both from its environment, once)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch, self.process, self.format, self.storage = scratch, None, None, None

    def use(self, file_format: str, storage: str | None = None) -> bool:
        """Whether a worker was (re)started: its first run pays imports and connections."""
        if self.process is not None and (self.format, self.storage) == (file_format, storage):
            return False
        self.stop()
        from worker import app

        env = {**os.environ, "PYTHONPATH": str(ROOT), "VECTOR_BACKUP_FORMAT": file_format}
        set_storage(env, storage)
        log_name = f"worker-{file_format}{'-s3' if storage else ''}.log"
        with open(self.scratch / log_name, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-q", "-A", "worker", "worker", "-c", "2", "-l", "warning"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.format, self.storage = file_format, storage
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1) and time.monotonic() < deadline:
            pass
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=[*WORKLOADS, "indexed", "s3", "all"],
        default="all",
        help="s3: only the S3 phase, on every workload (or --rows)",
    )
    parser.add_argument("--rows", type=int, help="a custom workload: rows (with --dim)")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    workloads = (
        {"custom": (args.rows, args.dim)}
        if args.rows
        else (
            WORKLOADS
            if args.workload in ("all", "s3")
            else {k: v for k, v in WORKLOADS.items() if k == args.workload}
        )
    )

    from worker.embedded import start_postgres, start_redis

    scratch = Path(tempfile.mkdtemp(prefix="vector-bench-"))
    servers, workers, endpoint = [], None, None
    try:
        servers.append(start_postgres(scratch / "pg"))
        servers.append(start_redis(scratch / "redis"))
        url, redis_url = servers[0].url, servers[1].url
        task_root = scratch / "training_data"
        os.environ.update(
            VECTOR_DB_URL=url,
            CELERY_BROKER_URL=redis_url,
            CELERY_RESULT_BACKEND=redis_url,
            VECTOR_TASK_ROOT=str(task_root),
        )
        from worker import app

        app.conf.update(broker_url=redis_url, result_backend=redis_url)
        workers = Workers(scratch)
        workers.use("csv")
        seed(url, 0, 16)
        chain_backup()  # warm-up: connections, imports, the first chord
        lines = [
            "# Benchmark results",
            "",
            (
                f"`make bench` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL 16 + "
                f"pgvector (pgserver), median of {args.repeat} runs. Ratios are to `psql \\copy` in the "
                f"same run."
            )
            if args.workload != "s3"
            else (
                f"`--workload s3` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: the S3 phase "
                f"alone. Ratios are to the local directory in the same run."
            ),
            "",
        ]
        if args.workload in ("s3", "all"):
            from bench.s3_phase import s3_phase, start_endpoint

            endpoint = start_endpoint(scratch)
        for name, (rows, dim) in workloads.items():
            if args.workload != "s3":
                lines += measure(url, scratch, name, rows, dim, args.repeat, workers)
            if endpoint is not None:
                seeded = args.workload != "s3"
                lines += s3_phase(url, scratch, name, rows, dim, args.repeat, workers, endpoint, seeded)
        if args.workload in ("indexed", "all") and not args.rows:
            from bench.indexed_restore import indexed_phase

            lines += indexed_phase(url, min(args.repeat, 3), workers)
        if args.workload == "s3":
            return finish(lines, args.out)
        workers.use("csv")
        say("memory and chain overhead")
        small, big = peak_rss(url, 10_000, scratch), peak_rss(url, 1_000_000, scratch)
        growth = (big - small) / 2**20
        seed(url, 0, 16)
        overhead = median_time(lambda: chain_backup(split_workers=2), args.repeat)
        lines += [
            "### Memory and overhead",
            "",
            "| measure | value | target | |",
            "|---|---|---|---|",
            f"| peak RSS of one table backup, 10k → 1M rows | +{growth:.1f} MB | < 50 MB | "
            f"{'PASS' if growth < 50 else 'FAIL'} |",
            f"| chain overhead (empty tables, whole run) | {overhead:.2f} s | < 0.5 s | "
            f"{'PASS' if overhead < 0.5 else 'FAIL'} |",
            "",
        ]
        return finish(lines, args.out)
    finally:
        if workers is not None:
            workers.stop()
        if endpoint is not None:
            endpoint.stop()
        from worker.celery_app import release_pending_results

        release_pending_results()
        for server in reversed(servers):
            server.stop()


def finish(lines: list[str], out: Path) -> int:
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    say(f"written to {out}")
    return 0


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
