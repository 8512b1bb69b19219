"""`make bench`'s S3 phase: the same backup through a real worker into S3-compatible
object storage (`VECTOR_STORAGE_URL=s3://bucket/prefix`) against the local directory,
for each workload, in CSV and in the binary format, and the restore from each.

The endpoint is moto's server started on a loopback port, or the one `BENCH_S3_URL`
names (with the AWS credentials and region of the environment); either way a new bucket
is made for the run. A worker reads its storage once, when it starts, so local and S3
runs cannot be interleaved per repetition as the other phases are without restarting a
worker each time: they run in adjacent blocks with the same worker settings (`-c 2`,
one stream: moto, on the same 2 cores, bounds a range-split run, which the tests show
across hosts), in an order that restarts the worker three times per workload. Restores run in the bench
process, so they are interleaved.

`python -m bench.vector_bench --workload s3` runs this phase alone.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.vector_bench import (
    TABLE,
    TICK,
    Timing,
    busy_cpu,
    chain_backup,
    discard_set,
    drop_restored,
    project_restore,
    psql_copy_out,
    restore_database,
    say,
    seed,
)

MAX_REPEAT = 3  # backups per method and workload: keeps the phase near a minute
RESTORE_REPEAT = 2
PREFIX = "training_data"


@dataclass
class Endpoint:
    url: str  # the endpoint, http(s)://
    root: str  # s3://bucket/prefix, VECTOR_STORAGE_URL of the S3 runs
    embedded: bool
    pid: int | None  # moto's server, whose CPU is counted apart
    stop: Callable[[], None]

    def cpu(self) -> float:
        """CPU-seconds moto's server has used so far (0 for a remote endpoint)."""
        if self.pid is None:
            return 0.0
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(map(int, fields[11:15])) / TICK


def start_endpoint(scratch: Path) -> Endpoint:
    """moto's server unless `BENCH_S3_URL` names an endpoint, and a new bucket in it. The
    AWS variables are set in this process, so the workers it starts inherit them."""
    from common.storage.s3_client import S3Options, s3_client

    url = os.environ.get("BENCH_S3_URL")
    server = None
    if not url:
        from worker.embedded import start_s3

        server = start_s3(scratch / "s3")
        url = server.url
        # moto accepts any credentials; these keep the environment's real ones away from it.
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
        os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ["AWS_ENDPOINT_URL"] = url
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)  # it would win over AWS_ENDPOINT_URL
    options = S3Options.from_env()
    client = s3_client(options)
    bucket = f"vector-bench-{uuid.uuid4().hex[:12]}"
    where = {} if options.region == "us-east-1" else {"LocationConstraint": options.region}
    client.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": where} if where else {}))

    def stop() -> None:
        if server is not None:
            server.stop()  # moto keeps nothing once stopped
            return
        # A real endpoint: what the runs left (set logs, a failed run's files), then the bucket.
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)

    pid = moto_pid(url) if server is not None else None
    say(f"S3 endpoint: {'moto on ' if server else ''}{url}, bucket {bucket}")
    return Endpoint(url, f"s3://{bucket}/{PREFIX}", server is not None, pid, stop)


def moto_pid(url: str) -> int | None:
    """The pid of the moto server listening on `url`'s port (start_s3 keeps it to itself)."""
    port = url.rsplit(":", 1)[1].encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"moto.server" in args and port in args:
            return int(pid)
    return None


@dataclass
class Run:
    seconds: float
    busy: float  # CPU-seconds on the whole machine
    server: float  # of which PostgreSQL's
    s3: float  # of which moto's
    result: dict


def s3_phase(
    url: str,
    scratch: Path,
    name: str,
    rows: int,
    dim: int,
    repeat: int,
    workers,
    endpoint: Endpoint,
    seeded: bool,
) -> list[str]:
    """The S3 lines of one workload. `seeded`: `measure` has just seeded the table and
    written its CSV (with `--workload s3` this phase does both)."""
    out = scratch / "out.csv"
    lines = []
    if not seeded:
        say(f"{name}: seeding {rows:,} rows x {dim} dims")
        seed(url, rows, dim)
        psql_copy_out(url, out)  # the CSV's size, and a warm cache
        os.sync()
        lines.append(f"### {name}: {rows:,} rows × {dim} dims, {out.stat().st_size / 1e6:,.0f} MB of CSV")
    size = out.stat().st_size
    repeat = min(repeat, MAX_REPEAT)
    say(f"{name}: S3")
    blocks = [("csv", None), ("csv", endpoint.root), ("binary", endpoint.root), ("binary", None)]
    if workers.format == "binary":  # after a binary phase: the worker running serves the first block
        blocks.reverse()
    runs: dict[tuple[str, str | None], list[Run]] = {}
    for file_format, storage in blocks:
        if workers.use(file_format, storage):
            discard_set(chain_backup(storage=storage))  # warm-up of the new worker: imports, connections
        done = runs[file_format, storage] = []
        for _ in range(repeat):
            done.append(timed_backup(storage, endpoint))
            # Untimed, as in `measure`: the set before goes (the newest stays for the
            # restores) and the disk is drained, so no run pays for another's writes.
            if len(done) > 1:
                discard_set(done[-2].result)
            os.sync()
    say(
        f"{name}: "
        + "; ".join(
            f"{fmt} {'S3' if where else 'local'} {[round(r.seconds, 2) for r in block]}"
            for (fmt, where), block in runs.items()
        )
    )
    try:
        restores = restore_lines(url, runs, endpoint, rows, size)
    finally:
        for block in runs.values():
            discard_set(block[-1].result)  # moto keeps objects in memory and temp files
    return lines + backup_lines(runs, endpoint, rows, size, repeat) + restores


def timed_backup(storage: str | None, endpoint: Endpoint) -> Run:
    before, s3_before = busy_cpu(), endpoint.cpu()
    started = time.perf_counter()
    result = chain_backup(storage=storage)
    seconds = time.perf_counter() - started
    busy, server = (after - b for after, b in zip(busy_cpu(), before, strict=True))
    return Run(seconds, busy, server, endpoint.cpu() - s3_before, result)


def backup_lines(runs: dict, endpoint: Endpoint, rows: int, size: int, repeat: int) -> list[str]:
    from common.storage.s3_client import MIB, S3Options

    options = S3Options.from_env()
    binary_file = runs["binary", None][-1].result["tables_backed_up"][TABLE]["file_size_bytes"]
    cores = os.cpu_count()
    where = (
        f"moto's server (`worker/embedded.py`), a Python process on the same {cores} cores "
        f"that keeps objects in memory and temp files and fsyncs nothing, so these ratios are "
        f"a floor for a real S3 endpoint"
        if endpoint.embedded
        else "the endpoint `BENCH_S3_URL` names"
    )
    lines = [
        "",
        f"S3-compatible object storage (`VECTOR_STORAGE_URL=s3://…`, a worker started with it) on "
        f"{where}. Each S3 method against the local directory with the same worker settings "
        f"(`-c 2`, one stream; range-split on S3 is shown by the tests, as moto on these 2 cores "
        f"is what bounds it here) and format, in adjacent blocks of "
        f"{repeat} runs (a worker reads its storage once, at start). The worker streams the "
        f"COPY into parts of {options.part_size / MIB:g} MiB sent on {options.uploads} threads "
        f"beside it (`VECTOR_S3_PART_SIZE_MB`, `VECTOR_S3_UPLOADS`); MB/s are of the CSV, as in "
        f"the other tables (the binary file is {size / binary_file:.1f}× smaller).",
        "",
        "| method | time (median) | rows/s | MB/s | vs local, same run | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    usage = []
    for fmt, label in (("csv", "this project, single stream"), ("binary", BINARY_LABEL)):
        local = Timing(f"{label}, local directory (whole chain)", median(runs[fmt, None]), rows, size)
        s3 = Timing(f"{label}, S3 (whole chain)", median(runs[fmt, endpoint.root]), rows, size)
        lines += [local.line(local), s3.line(local)]
        usage += [(local.method, runs[fmt, None]), (s3.method, runs[fmt, endpoint.root])]
    lines += [
        "",
        "CPU-seconds per run (medians) on the whole machine, of which PostgreSQL's and the S3 server's:",
        "",
        "| method | time | CPU-s | PostgreSQL | S3 server | the worker and the rest |",
        "|---|---|---|---|---|---|",
    ]
    rest = {}
    for method, block in usage:
        busy, server, s3 = (statistics.median(getattr(r, k) for r in block) for k in ("busy", "server", "s3"))
        rest[method] = busy - server - s3
        s3_cpu = f"{s3:.2f}" if endpoint.pid is not None else "n/a"  # a remote endpoint's is not ours
        lines.append(
            f"| {method} | {median(block):.2f} s | {busy:.2f} | {server:.2f} | {s3_cpu} | "
            f"{rest[method]:.2f} |"
        )
    (local_csv, _), (s3_csv, _) = usage[0], usage[1]
    lines += [
        "",
        f"The S3 path's own cost, CSV: the worker and the rest used {rest[s3_csv]:.2f} CPU-seconds per "
        f"run against {rest[local_csv]:.2f} to a local directory (HTTP requests and part checksums on "
        f"the upload threads, against the local file's writes and fsync).",
    ]
    return lines


BINARY_LABEL = "this project, binary format"


def restore_lines(url: str, runs: dict, endpoint: Endpoint, rows: int, size: int) -> list[str]:
    """This project's restore of the newest set of each block, local against S3,
    interleaved (the restore runs in this process: no worker to restart)."""
    dsn = restore_database(url)
    sets = {
        key: f"{block[-1].result['backup_directory']}/{block[-1].result['manifest']}"
        for key, block in runs.items()
    }
    times: dict[tuple[str, str | None], list[float]] = {key: [] for key in sets}
    for _ in range(RESTORE_REPEAT):
        for key, manifest in sets.items():
            drop_restored(dsn)
            started = time.perf_counter()
            project_restore(dsn, manifest if "://" in manifest else Path(manifest))
            times[key].append(time.perf_counter() - started)
    say(
        "S3 restores: "
        + "; ".join(
            f"{k[0]} {'S3' if k[1] else 'local'} {[round(t, 2) for t in v]}" for k, v in times.items()
        )
    )
    lines = [
        "",
        "| restore | time (median) | rows/s | MB/s | vs local, same run | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"csv": "this project's restore", "binary": "this project's restore of the binary set"}
    for fmt, label in labels.items():
        local = Timing(f"{label}, local directory", statistics.median(times[fmt, None]), rows, size)
        s3 = Timing(f"{label}, from S3", statistics.median(times[fmt, endpoint.root]), rows, size)
        lines += [local.line(local), s3.line(local)]
    return [*lines, ""]


def median(block: list[Run]) -> float:
    return statistics.median(r.seconds for r in block)
