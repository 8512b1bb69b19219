"""A binary set as the seeds' CSV files, without a database: `python -m worker export-csv`.

Each value is decoded from its binary representation to the text PostgreSQL prints for
it, and written as COPY writes CSV with a header, so the files equal a CSV
backup of the same snapshot byte for byte. Pure Python: formatting every float of a
vector is slow (about 100,000 floats a second), which suits an escape hatch, not a
routine step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from common.compression import decompressing
from common.exceptions import VerifyError
from common.manifest import SetRef, locate, verify_set
from common.pgbinary import BinaryCopyError, csv_line, decoder, read_tuples
from common.storage import open_storage
from common.table_job import backup_file_name


class Exported(NamedTuple):
    table: str
    file: str
    rows: int


def export_csv(
    where: SetRef | Path, out: Path, signing_key: str | None = None, temp_suffix: str = ".tmp"
) -> list[Exported]:
    """Verify the set (sha256 of every file), then write each table's CSV into `out`."""
    ref = locate(where, temp_suffix)
    manifest = verify_set(ref, deep=False, signing_key=signing_key)
    formats = {entry.get("format", "csv") for entry in manifest["tables"].values()}
    if formats != {"binary"}:
        raise VerifyError(f"{ref.manifest}: a {'/'.join(sorted(formats))} set; export-csv reads binary sets")
    target = open_storage(out, temp_suffix)
    return [_export_table(ref, target, table, entry) for table, entry in manifest["tables"].items()]


def _export_table(ref: SetRef, target: Any, table: str, entry: dict[str, Any]) -> Exported:
    columns = entry["columns"]
    try:
        decoders = [decoder(kind) for _, kind in columns]
    except BinaryCopyError as exc:
        raise VerifyError(f"{table}: {exc}") from None
    name = backup_file_name(table, ref.timestamp)
    rows = 0
    try:
        with ref.storage.open(entry["file"]) as raw, target.writer(name) as out:
            stream = decompressing(raw, entry["file"])
            out.write(csv_line([c[0] for c in columns]).encode())
            for row in read_tuples(stream, len(columns)):
                fields = [None if v is None else d(v) for d, v in zip(decoders, row, strict=True)]
                out.write(csv_line(fields).encode())
                rows += 1
            if rows != entry["rows"]:
                raise VerifyError(
                    f"{table}: {entry['file']} holds {rows} rows, the manifest says {entry['rows']}"
                )
    except (BinaryCopyError, UnicodeDecodeError) as exc:
        raise VerifyError(f"{table}: {entry['file']} is not a valid binary COPY file: {exc}") from None
    return Exported(table, name, rows)
