"""What people read, rendered from plain dicts: the same text in the CLI, the API and the
tasks' events, so it is checked once here."""

from __future__ import annotations

from pathlib import Path

from common import output

STATS = {
    "backup_performed": True,
    "truncate_performed": True,
    "backup_directory": "/root/t1/vector_bak",
    "tables_backed_up": {
        "langchain_pg_collection": {
            "success": True,
            "row_count": 2,
            "file_size_bytes": 1024,
            "file_size": "1.0 KB",
            "backup_file": "langchain_pg_collection_20250720_121007.csv",
        },
        "langchain_pg_embedding": {
            "success": True,
            "row_count": 1500,
            "file_size_bytes": 2_202_010,
            "file_size": "2.1 MB",
            "backup_file": "langchain_pg_embedding_20250720_121007.csv",
        },
    },
    "truncate_results": {"langchain_pg_embedding": {"rows_before": 1500}},
    "duration": 3.14,
}


def test_nothing_asked_reads_not_run():
    assert output.summary_text(None, None) == "vector table management: not run" == output.NOT_RUN


def test_the_summary_names_the_set_each_table_and_the_truncate():
    text = output.summary_text(STATS, None)
    assert "✓ backup performed: 2 tables, 1,502 rows, 2 files, 2.1 MB in /root/t1/vector_bak" in text
    assert (
        "  - langchain_pg_embedding: 1,500 rows -> langchain_pg_embedding_20250720_121007.csv (2.1 MB)"
        in text
    )
    assert "✓ truncate performed: langchain_pg_embedding emptied (1,500 rows removed)" in text
    assert text.splitlines()[-2] == "✓ duration: 3.1s"


def test_a_failed_run_leads_with_its_error_and_names_the_failed_table():
    failed = {**STATS, "backup_performed": False, "truncate_performed": False}
    failed["tables_backed_up"] = {"langchain_pg_embedding": {"success": False, "error": "no such table"}}
    text = output.summary_text(failed, "backup failed")
    assert text.splitlines()[1:4] == [
        "✗ run failed: backup failed",
        "✗ backup not completed",
        "  - langchain_pg_embedding: FAILED - no such table",
    ]
    assert "- truncate: not performed" in text


def test_progress_reads_rows_of_the_estimate_and_size():
    progress = {
        "table": "t",
        "step": "copying",
        "rows": 50_000,
        "total_estimate": 150_000,
        "bytes": 31_561_113,
    }
    assert output.progress_line({**progress, "percent": 33.3}) == (
        "t: copying 50,000 of ~150,000 rows (33.3%), 30.1 MB"
    )
    assert output.progress_line({**progress, "total_estimate": None, "percent": None}) == (
        "t: copying 50,000 rows, 30.1 MB"
    )


def test_a_stopped_run_says_how_and_why():
    status = {"run_id": "r1", "state": "abandoned", "reason": "no heartbeat for 30s"}
    assert output.stopped_message(status) == "run r1 was abandoned: no heartbeat for 30s"
    assert output.stopped_message({"run_id": "r1", "state": "cancelled"}) == "run r1 was cancelled"
    assert (
        output.task_skipped_message("r1", "cancelled", None) == "run r1 is cancelled; this task did nothing"
    )


def test_a_cancel_refused_says_what_the_run_became():
    assert (
        output.not_cancellable_message("r1", "cancelled")
        == "run r1 has already been cancelled; nothing to cancel"
    )
    assert output.not_cancellable_message("r1", "truncating").endswith("can no longer be cancelled")


def test_a_run_line_names_its_database_without_password_and_its_tables():
    status = {
        "run_id": "r1",
        "task_id": None,
        "state": "succeeded",
        "database": {"host": "db", "port": 5432, "dbname": "vectors", "user": "u"},
        "tables": {"langchain_pg_embedding": {"success": True, "rows": 1500}, "x": {"success": False}},
        "reason": "",
    }
    line = output.status_line(status)
    assert line == (
        "r1  -  u@db:5432/vectors  succeeded  started -  heartbeat -  "
        "langchain_pg_embedding: 1,500 rows; x: FAILED"
    )
    assert "\n" not in line


def test_verify_lines_end_with_the_manifest():
    manifest = {"tables": {"t": {"rows": 3, "bytes": 1023, "file": "t_1.csv"}}}
    assert output.verified_lines(manifest, Path("/x/manifest_1.json")) == [
        "✓ t: 3 rows, 1023.0 B, sha256 ok -> t_1.csv",
        "✓ manifest_1.json verifies",
    ]
