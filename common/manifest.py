"""The manifest of a backup set, written beside its CSVs, and the check that a set is intact.

One `vector_bak/` holds many sets (nightly backups share it), so each manifest is named
after its set's timestamp: `manifest_{timestamp}.json`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from common.atomic import atomic_output
from common.exceptions import VerifyError
from common.run_result import VectorRunResult

FORMAT_VERSION = 1
READ_CHUNK = 1 << 20


def manifest_name(timestamp: str) -> str:
    return f"manifest_{timestamp}.json"


def write_manifest(
    directory: Path, result: VectorRunResult, server: dict[str, str | None], temp_suffix: str = ".tmp"
) -> Path:
    """Write the set's manifest atomically; the result dict must describe a complete set."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": result["run_id"],
        "task_id": result["task_id"],
        "timestamp": result["timestamp"],
        "database": result["database"],
        "server": server,
        "tables": {
            name: {
                "file": info["backup_file"],
                "rows": info["row_count"],
                "bytes": info["file_size_bytes"],
                "sha256": info["sha256"],
                "duration": info["duration"],
                "columns": info["columns"],
                "ddl": info["ddl"],
            }
            for name, info in result["tables_backed_up"].items()
        },
    }
    path = directory / manifest_name(result["timestamp"])
    with atomic_output(path, temp_suffix) as out:
        out.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return path


def find_manifest(path: Path) -> Path:
    """`path` itself if it is a manifest; for a directory, its newest set's manifest."""
    if path.is_dir():
        manifests = sorted(path.glob("manifest_*.json"))
        if not manifests:
            raise VerifyError(f"{path}: no manifest_*.json in this directory")
        return manifests[-1]
    if not path.is_file():
        raise VerifyError(f"{path}: no such file or directory")
    return path


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"{path.name}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise VerifyError(f"{path.name}: not a format {FORMAT_VERSION} manifest")
    if not isinstance(manifest.get("tables"), dict) or not manifest["tables"]:
        raise VerifyError(f"{path.name}: the manifest lists no tables")
    return manifest


def verify_set(path: Path) -> dict[str, Any]:
    """Re-check every file of a set: size, sha256, CSV row count and header.

    Returns the manifest; raises `VerifyError` listing every problem found.
    """
    manifest_path = find_manifest(path)
    manifest = load_manifest(manifest_path)
    problems = []
    for table, entry in manifest["tables"].items():
        problems += [f"{table}: {p}" for p in _check_file(manifest_path.parent, entry)]
    if problems:
        raise VerifyError(f"{manifest_path.name}: " + "; ".join(problems))
    return manifest


def _check_file(directory: Path, entry: dict[str, Any]) -> list[str]:
    name = str(entry.get("file", ""))
    file = directory / name
    if not name or Path(name).name != name or not file.is_file():
        return [f"file {name!r} is missing"]
    problems = []
    size = file.stat().st_size
    if size != entry.get("bytes"):
        problems.append(f"{name} is {size} bytes, the manifest says {entry.get('bytes')}")
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != entry.get("sha256"):
        problems.append(f"{name} does not match its sha256")
    try:
        header, rows = _csv_shape(file)
    except (csv.Error, UnicodeDecodeError) as exc:
        return [*problems, f"{name} is not valid UTF-8 CSV: {exc}"]
    if header != [c[0] for c in entry.get("columns", [])]:
        problems.append(f"{name} header {header} does not match the manifest's columns")
    if rows != entry.get("rows"):
        problems.append(f"{name} holds {rows} rows, the manifest says {entry.get('rows')}")
    return problems


def _csv_shape(file: Path) -> tuple[list[str], int]:
    with open(file, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        return header, sum(1 for _ in reader)
