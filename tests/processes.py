"""Run the project's own commands as real processes, the way users run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def worker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m worker ARGS` with no stdin, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_logged(args: list[str], log: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """`python ARGS` from the project root, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env or project_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )


def run_script(
    script: str, *args: str, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess:
    """`python -c SCRIPT ARGS` from the project root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
