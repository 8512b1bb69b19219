"""The manifest of a backup set, written beside its CSVs, and the check that a set is intact.

One `vector_bak/` holds many sets (nightly backups share it), so each manifest is named
after its set's timestamp: `manifest_{timestamp}.json`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from common.compression import decompressing, of_file
from common.config import FILE_FORMATS
from common.consistency import COLLECTION_TABLE, link_column, missing_collections
from common.digest import FileDigest, valid_part_sizes
from common.exceptions import StorageError, VerifyError
from common.formats import DEFAULT as DEFAULT_FORMAT
from common.formats import file_format
from common.run_result import VectorRunResult
from common.storage import UnsafeFile, open_storage, plain_name
from common.table_schema import check_schema

# 2: tables described as data (`schema`, common.table_schema); 1 carried SQL text
# (`ddl`), which restore never runs: a format 1 set restores only into existing tables.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
READ_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20


MANIFEST_PREFIX, MANIFEST_SUFFIX = "manifest_", ".json"
MANIFEST_GLOB = f"{MANIFEST_PREFIX}*{MANIFEST_SUFFIX}"


def manifest_name(timestamp: str) -> str:
    return f"{MANIFEST_PREFIX}{timestamp}{MANIFEST_SUFFIX}"


def manifest_timestamp(name: str) -> str:
    """The set's timestamp, from its manifest's name."""
    return name[len(MANIFEST_PREFIX) : -len(MANIFEST_SUFFIX)]


def write_manifest(
    storage: Any, result: VectorRunResult, server: dict[str, str | None], signing_key: str | None = None
) -> str:
    """Write the set's manifest atomically, signed with `signing_key` if given; the result
    dict must describe a complete set. Returns its name."""
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
                "format": info.get("format", DEFAULT_FORMAT),
                **{k: info[k] for k in ("csv_bytes", "csv_sha256", "part_sizes") if k in info},
                "duration": info["duration"],
                "columns": info["columns"],
                "schema": info["schema"],
            }
            for name, info in result["tables_backed_up"].items()
        },
    }
    if signing_key is not None:
        manifest["signature"] = {"algorithm": SIGNATURE, "value": signature(manifest, signing_key)}
    name = manifest_name(result["timestamp"])
    with storage.writer(name) as out:
        out.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return name


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


@dataclass(frozen=True)
class SetRef:
    """A set: its storage and its manifest's name there."""

    storage: Any
    manifest: str

    @property
    def timestamp(self) -> str:
        return manifest_timestamp(self.manifest)


def locate(where: SetRef | Path | str, temp_suffix: str = ".tmp") -> SetRef:
    """The set `where` names: a manifest, or a directory or storage URL (its newest set)."""
    if isinstance(where, SetRef):
        return where
    text = os.fspath(where)
    if "://" in text:
        return _locate_url(text.rstrip("/"), temp_suffix)
    path = Path(text)
    if path.is_dir():
        return _newest(open_storage(path, temp_suffix), str(path))
    if path.is_symlink():
        raise VerifyError(f"{path}: a manifest that is a symbolic link is never followed")
    if not path.is_file():
        raise VerifyError(f"{path}: no such file or directory")
    return SetRef(open_storage(path.parent, temp_suffix), path.name)


def _locate_url(url: str, temp_suffix: str) -> SetRef:
    parent, _, last = url.rpartition("/")
    if not fnmatch.fnmatchcase(last, MANIFEST_GLOB):
        return _newest(open_storage(url, temp_suffix), url)
    storage = open_storage(parent, temp_suffix)
    if storage.stat(last) is None:
        raise VerifyError(f"{url}: no such manifest")
    return SetRef(storage, last)


def _newest(storage: Any, where: str) -> SetRef:
    manifests = storage.names(MANIFEST_GLOB)
    if not manifests:
        raise VerifyError(f"{where}: no {MANIFEST_GLOB} in this directory")
    return SetRef(storage, manifests[-1])


def find_manifest(where: Path | str) -> str:
    """Where the manifest is: `where` itself if it is one; for a directory, its newest set's."""
    ref = locate(where)
    return f"{ref.storage.location}/{ref.manifest}"


def load_manifest(where: SetRef | Path | str) -> dict[str, Any]:
    ref = locate(where)
    name = ref.manifest
    try:
        with ref.storage.open(name) as raw, io.BufferedReader(raw) as buffered:
            text = buffered.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise VerifyError(f"{name}: a manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB is refused")
        manifest = json.loads(text.decode("utf-8"))
    except StorageError:
        raise  # the storage is down or refuses: nothing is known about the set
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, JSON, huge numbers
        raise VerifyError(f"{name}: unreadable manifest: {type(exc).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        raise VerifyError(f"{name}: not a format {FORMAT_VERSION} manifest")
    if not isinstance(manifest.get("tables"), dict) or not manifest["tables"]:
        raise VerifyError(f"{name}: the manifest lists no tables")
    for table, entry in manifest["tables"].items():
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), kind)
            for k, kind in (("file", str), ("rows", int), ("bytes", int), ("sha256", str))
        ):
            raise VerifyError(f"{name}: {str(table)[:100]}: file, rows, bytes or sha256 missing or malformed")
        if "part_sizes" in entry and not valid_part_sizes(entry["part_sizes"], entry["bytes"]):
            raise VerifyError(f"{name}: {str(table)[:100]}: part_sizes malformed or not adding up to bytes")
        columns = entry.get("columns")
        if not isinstance(columns, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in columns
        ):
            raise VerifyError(
                f"{name}: {str(table)[:100]}: the manifest's columns are not [name, type] pairs"
            )
        if manifest["format_version"] >= 2:
            try:
                check_schema(table, entry.get("schema"), [c[0] for c in columns])
            except VerifyError as exc:
                raise VerifyError(f"{name}: {exc}") from None
    return manifest


def verify_set(
    where: SetRef | Path, deep: bool = True, signing_key: str | None = None, hash_files: bool = True
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
    ref = locate(where)
    manifest = load_manifest(ref)
    check_signature(ref.manifest, manifest, signing_key)
    problems = []
    ids = {}
    for table, entry in manifest["tables"].items():
        file_problems, ids[table] = _check_file(ref.storage, table, entry, deep or hash_files, deep)
        problems += [f"{table}: {p}" for p in file_problems]
    if not problems:
        missing = missing_collections({t: {"collection_ids": v} for t, v in ids.items() if v is not None})
        if missing:
            problems.append(
                f"{len(missing)} collection id(s) referenced by embeddings are not in the "
                f"{COLLECTION_TABLE} file (e.g. {missing[0]})"
            )
    if problems:
        raise VerifyError(f"{ref.manifest}: " + "; ".join(problems))
    return manifest


def _check_file(
    storage: Any, table: str, entry: dict[str, Any], hash_file: bool = True, deep: bool = True
) -> tuple[list[str], set[str] | None]:
    """The file's problems, and the collection ids it holds or references (None: no such column)."""
    name = str(entry.get("file", ""))
    try:
        info = storage.stat(plain_name(name))
    except UnsafeFile as exc:
        return [str(exc) if "/" not in name else f"file {name!r} is missing"], None
    except StorageError:
        raise
    except OSError as exc:
        return [f"{name} cannot be read: {type(exc).__name__}"], None
    if info is None:
        return [f"file {name!r} is missing"], None
    fmt_name = entry.get("format", DEFAULT_FORMAT)
    if fmt_name not in FILE_FORMATS:
        return [f"{name} is in format {str(fmt_name)[:40]!r}, which this version cannot read"], None
    fmt = file_format(fmt_name)
    problems = []
    if info.size != entry.get("bytes"):
        problems.append(f"{name} is {info.size} bytes, the manifest says {entry.get('bytes')}")
    described = entry.get("columns", [])
    columns = [c[0] for c in described]
    link = link_column(table, columns)
    try:
        if hash_file and _sha256(storage, name, entry.get("part_sizes")) != entry.get("sha256"):
            problems.append(f"{name} does not match its sha256")
        with storage.open(name) as raw:
            rows = decompressing(raw, name)
            if not problems and not deep:
                return _header_problems(fmt, rows, described, name), None
            scan = fmt.scan(rows, described, columns.index(link) if link else None)
    except StorageError:
        raise
    except (*fmt.errors, OSError, EOFError, zstandard.ZstdError) as exc:
        return [*problems, f"{name} is not valid {fmt.description}: {exc}"], None
    if scan.header is not None and scan.header != columns:
        problems.append(f"{name} header {scan.header} does not match the manifest's columns")
    if scan.rows != entry.get("rows"):
        problems.append(f"{name} holds {scan.rows} rows, the manifest says {entry.get('rows')}")
    return problems, scan.ids


def _header_problems(fmt: Any, rows: BinaryIO, columns: list[list[str]], name: str) -> list[str]:
    try:
        same = fmt.header_matches(rows, columns)
    except StorageError:
        raise
    except (*fmt.errors, OSError, EOFError, zstandard.ZstdError):
        same = False
    return [] if same else [f"{name} header does not match the manifest's columns"]


def _sha256(storage: Any, name: str, part_sizes: list[int] | None = None) -> str:
    digest = FileDigest(part_sizes)
    with storage.open(name) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
