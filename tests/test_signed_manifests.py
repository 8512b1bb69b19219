"""With `VECTOR_SIGNING_KEY`, a set is trusted only if its manifest carries the key's HMAC:
a forger who rewrites a file and recomputes every hash in the manifest is refused by
verify, restore and truncate. Without a key a set proves only that it matches itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from common.exceptions import TruncateRefusedError
from tasks.pipeline import enqueue_vector_management, wait_for_run
from tasks.vector_backup import truncate_vector_tables
from tests.processes import worker_cli
from tests.runs import backup_half_of_truncate_run
from worker.sample_store import add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
ONE_SCHEMA = pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
KEY = "a-signing-key-of-some-length-42"
EMBEDDING = "langchain_pg_embedding"


def forge(manifest: Path) -> None:
    """Rewrite one document in the embedding file and recompute the manifest's hashes."""
    data = json.loads(manifest.read_text())
    entry = data["tables"][EMBEDDING]
    file = manifest.parent / entry["file"]
    lines = file.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"document", b"dOcUmEnT", 1)
    file.write_bytes(b"\n".join(lines))
    entry.update(bytes=file.stat().st_size, sha256=hashlib.sha256(file.read_bytes()).hexdigest())
    manifest.write_text(json.dumps(data))


@ONE_SCHEMA
def test_a_forged_set_with_recomputed_hashes_is_refused_only_with_a_key(store, task_id, monkeypatch):
    monkeypatch.setenv("VECTOR_SIGNING_KEY", KEY)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 200)
    result = wait_for_run(enqueue_vector_management(task_id, backup=True)["run_id"], 60)
    manifest = Path(result["backup_directory"]) / result["manifest"]
    signed = json.loads(manifest.read_text())
    assert signed["signature"]["algorithm"] == "hmac-sha256"
    assert worker_cli("verify", str(manifest)).returncode == 0

    forge(manifest)

    refused = worker_cli("verify", str(manifest))
    restored = worker_cli("restore", str(manifest))
    assert refused.returncode == 1 and "signature does not match VECTOR_SIGNING_KEY" in refused.stdout
    assert restored.returncode == 1 and "signature does not match" in restored.stdout
    assert count_rows(store.conn, EMBEDDING) == 200
    monkeypatch.delenv("VECTOR_SIGNING_KEY")
    fooled = worker_cli("verify", str(manifest))
    assert fooled.returncode == 0, "without a key, a set can only be checked against itself"


@ONE_SCHEMA
def test_with_a_key_an_unsigned_set_is_refused_by_verify_and_truncate(store, task_id, monkeypatch):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 150)
    result = backup_half_of_truncate_run(task_id)  # written without a key: unsigned
    manifest = Path(result["backup_directory"]) / result["manifest"]
    assert "signature" not in json.loads(manifest.read_text())
    monkeypatch.setenv("VECTOR_SIGNING_KEY", KEY)

    refused = worker_cli("verify", str(manifest))
    with pytest.raises(
        TruncateRefusedError, match="the manifest is not signed, and VECTOR_SIGNING_KEY is set"
    ):
        truncate_vector_tables.delay(result).get(timeout=60)

    assert refused.returncode == 1 and "is not signed" in refused.stdout
    assert count_rows(store.conn, EMBEDDING) == 150


def test_a_short_signing_key_is_a_configuration_error(services, monkeypatch):
    monkeypatch.setenv("VECTOR_SIGNING_KEY", "short")
    checked = worker_cli("verify", "/nonexistent")
    assert checked.returncode == 1 and "VECTOR_SIGNING_KEY must be at least 16 characters" in checked.stdout
