"""The manifest of a backup set, written beside its CSVs, and the check that a set is intact.

One `vector_bak/` holds many sets (nightly backups share it), so each manifest is named
after its set's timestamp: `manifest_{timestamp}.json`.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import zstandard

from common.atomic import atomic_output
from common.compression import of_file, open_text
from common.consistency import COLLECTION_TABLE, link_column, missing_collections
from common.exceptions import VerifyError
from common.run_result import VectorRunResult
from common.table_schema import check_schema

# 2: tables described as data (`schema`, common.table_schema); 1 carried SQL text
# (`ddl`), which restore never runs: a format 1 set restores only into existing tables.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
READ_CHUNK = 1 << 20


MANIFEST_PREFIX, MANIFEST_SUFFIX = "manifest_", ".json"
MANIFEST_GLOB = f"{MANIFEST_PREFIX}*{MANIFEST_SUFFIX}"


def manifest_name(timestamp: str) -> str:
    return f"{MANIFEST_PREFIX}{timestamp}{MANIFEST_SUFFIX}"


def manifest_timestamp(path: Path) -> str:
    """The set's timestamp, from its manifest's name."""
    return path.name[len(MANIFEST_PREFIX) : -len(MANIFEST_SUFFIX)]


def write_manifest(
    directory: Path,
    result: VectorRunResult,
    server: dict[str, str | None],
    temp_suffix: str = ".tmp",
    signing_key: str | None = None,
) -> Path:
    """Write the set's manifest atomically, signed with `signing_key` if given; the result
    dict must describe a complete set."""
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
                "compression": of_file(info["backup_file"]),
                **{k: info[k] for k in ("csv_bytes", "csv_sha256") if k in info},
                "duration": info["duration"],
                "columns": info["columns"],
                "schema": info["schema"],
            }
            for name, info in result["tables_backed_up"].items()
        },
    }
    if signing_key is not None:
        manifest["signature"] = {"algorithm": SIGNATURE, "value": signature(manifest, signing_key)}
    path = directory / manifest_name(result["timestamp"])
    with atomic_output(path, temp_suffix) as out:
        out.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return path


SIGNATURE = "hmac-sha256"


def signature(manifest: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 over the manifest's canonical JSON (sorted keys, no spaces), signature aside."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def check_signature(name: str, manifest: dict[str, Any], key: str | None) -> None:
    """With a key, refuse a manifest that is unsigned or not signed with it. Without one
    there is nothing to check: a set then only proves that it matches its own manifest."""
    if key is None:
        return
    given = manifest.get("signature")
    if (
        not isinstance(given, dict)
        or given.get("algorithm") != SIGNATURE
        or not isinstance(given.get("value"), str)
    ):
        raise VerifyError(f"{name}: the manifest is not signed, and VECTOR_SIGNING_KEY is set; refused")
    try:
        expected = signature(manifest, key)
    except UnicodeEncodeError:
        raise VerifyError(f"{name}: the manifest holds text that cannot be signed; refused") from None
    if not hmac.compare_digest(given["value"], expected):
        raise VerifyError(
            f"{name}: the manifest's signature does not match VECTOR_SIGNING_KEY "
            "(changed since it was written, or signed with another key); refused"
        )


def find_manifest(path: Path) -> Path:
    """`path` itself if it is a manifest; for a directory, its newest set's manifest."""
    if path.is_dir():
        manifests = sorted(p for p in path.glob(MANIFEST_GLOB) if not p.is_symlink())
        if not manifests:
            raise VerifyError(f"{path}: no {MANIFEST_GLOB} in this directory")
        return manifests[-1]
    if not path.is_file():
        raise VerifyError(f"{path}: no such file or directory")
    if path.is_symlink():
        raise VerifyError(f"{path}: a manifest that is a symbolic link is never followed")
    return path


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, JSON, huge numbers
        raise VerifyError(f"{path.name}: unreadable manifest: {type(exc).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        raise VerifyError(f"{path.name}: not a format {FORMAT_VERSION} manifest")
    if not isinstance(manifest.get("tables"), dict) or not manifest["tables"]:
        raise VerifyError(f"{path.name}: the manifest lists no tables")
    for table, entry in manifest["tables"].items():
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), kind)
            for k, kind in (("file", str), ("rows", int), ("bytes", int), ("sha256", str))
        ):
            raise VerifyError(
                f"{path.name}: {str(table)[:100]}: file, rows, bytes or sha256 missing or malformed"
            )
        columns = entry.get("columns")
        if not isinstance(columns, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in columns
        ):
            raise VerifyError(
                f"{path.name}: {str(table)[:100]}: the manifest's columns are not [name, type] pairs"
            )
        if manifest["format_version"] >= 2:
            try:
                check_schema(table, entry.get("schema"), [c[0] for c in columns])
            except VerifyError as exc:
                raise VerifyError(f"{path.name}: {exc}") from None
    return manifest


def verify_set(
    path: Path, deep: bool = True, signing_key: str | None = None, hash_files: bool = True
) -> dict[str, Any]:
    """Re-check every file of a set: size, sha256, CSV row count and header, and that
    every collection id the embedding file references is in the collection file.

    `deep=False` (truncate, restore) parses a file's rows only when its sha256 does not
    match, to say what is wrong: a matching sha256 proves the bytes are those whose
    rows were counted, and whose link was checked, when the set was written. Restore
    also compares each COPY's row count with the manifest. `deep=True` (the `verify`
    command and task) parses every file regardless, which also catches a manifest forged
    to match altered files.

    With `signing_key`, the manifest must carry its signature (`check_signature`) first.
    `hash_files=False` (with `deep=False`) leaves the sha256 to a caller that hashes each
    file as it reads it anyway (restore), so a file is read once.
    Returns the manifest; raises `VerifyError` listing every problem found.
    """
    manifest_path = find_manifest(path)
    manifest = load_manifest(manifest_path)
    check_signature(manifest_path.name, manifest, signing_key)
    problems = []
    ids = {}
    for table, entry in manifest["tables"].items():
        file_problems, ids[table] = _check_file(manifest_path.parent, table, entry, deep or hash_files, deep)
        problems += [f"{table}: {p}" for p in file_problems]
    if not problems:
        missing = missing_collections({t: {"collection_ids": v} for t, v in ids.items() if v is not None})
        if missing:
            problems.append(
                f"{len(missing)} collection id(s) referenced by embeddings are not in the "
                f"{COLLECTION_TABLE} file (e.g. {missing[0]})"
            )
    if problems:
        raise VerifyError(f"{manifest_path.name}: " + "; ".join(problems))
    return manifest


def _check_file(
    directory: Path, table: str, entry: dict[str, Any], hash_file: bool = True, deep: bool = True
) -> tuple[list[str], set[str] | None]:
    """The file's problems, and the collection ids it holds or references (None: no such column)."""
    name = str(entry.get("file", ""))
    file = directory / name
    if not name or Path(name).name != name or not file.is_file():
        return [f"file {name!r} is missing"], None
    if file.is_symlink():
        return [f"{name} is a symbolic link, which is never followed"], None
    problems = []
    size = file.stat().st_size
    if size != entry.get("bytes"):
        problems.append(f"{name} is {size} bytes, the manifest says {entry.get('bytes')}")
    if hash_file:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry.get("sha256"):
            problems.append(f"{name} does not match its sha256")
    columns = [c[0] for c in entry.get("columns", [])]
    if not problems and not deep:
        return (
            [] if _csv_header(file) == columns else [f"{name} header does not match the manifest's columns"]
        ), None
    link = link_column(table, columns)
    try:
        header, rows, ids = _csv_shape(file, columns.index(link) if link else None)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError, zstandard.ZstdError) as exc:
        return [*problems, f"{name} is not valid UTF-8 CSV: {exc}"], None
    if header != columns:
        problems.append(f"{name} header {header} does not match the manifest's columns")
    if rows != entry.get("rows"):
        problems.append(f"{name} holds {rows} rows, the manifest says {entry.get('rows')}")
    return problems, ids


def _csv_header(file: Path) -> list[str]:
    try:
        with open_text(file) as f:
            return next(csv.reader(f), [])
    except (csv.Error, UnicodeDecodeError, OSError, EOFError, zstandard.ZstdError):
        return []


def _csv_shape(file: Path, id_column: int | None) -> tuple[list[str], int, set[str] | None]:
    """Header, row count and, for `id_column`, its distinct non-empty values (CSV NULL is empty)."""
    with open_text(file) as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if id_column is None:
            return header, sum(1 for _ in reader), None
        ids, rows = set(), 0
        for row in reader:
            rows += 1
            if id_column < len(row) and row[id_column]:
                ids.add(row[id_column])
        return header, rows, ids
