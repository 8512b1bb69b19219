"""Settings from the environment and the signature builder (pure, no services)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from celery.canvas import _chain, chord

from common.config import load_settings
from common.exceptions import ConfigurationError
from common.sizes import format_size
from tasks.vector_backup import build_vector_workflow

URL = "postgresql://alice:s3cr3t-pw@db.example:6543/vectors"


def test_defaults_follow_the_seeds():
    settings = load_settings({})
    vector = settings.vector
    assert settings.task_root == Path("data_pipeline/training_data")
    assert vector.backup_directory == "vector_bak"
    assert vector.supported_tables == ("langchain_pg_collection", "langchain_pg_embedding")
    assert vector.truncate_tables == ("langchain_pg_embedding",)
    assert vector.timestamp_format == "%Y%m%d_%H%M%S"
    assert vector.backup_temp_suffix == ".tmp"
    assert vector.progress_every == 50_000
    assert settings.backup_directory() == Path("data_pipeline/training_data/vector_bak")
    assert settings.backup_directory("task_1") == Path("data_pipeline/training_data/task_1/vector_bak")


def test_url_wins_over_parts_and_the_password_stays_hidden():
    target = load_settings({"VECTOR_DB_URL": URL, "VECTOR_DB_HOST": "ignored"}).database
    assert target.identity == {"host": "db.example", "port": 6543, "dbname": "vectors", "user": "alice"}
    assert target.describe() == "alice@db.example:6543/vectors"
    assert "s3cr3t" not in repr(target) + target.describe() + str(target.identity)
    assert target.password == "s3cr3t-pw"
    assert target.redact("failed for s3cr3t-pw") == "failed for ***"


def test_parts_are_used_without_a_url():
    env = {
        "VECTOR_DB_HOST": "h",
        "VECTOR_DB_PORT": "5433",
        "VECTOR_DB_NAME": "d",
        "VECTOR_DB_USER": "u",
        "VECTOR_DB_PASSWORD": "p",
    }
    target = load_settings(env).database
    assert (target.host, target.port, target.dbname, target.user, target.password) == (
        "h",
        5433,
        "d",
        "u",
        "p",
    )


@pytest.mark.parametrize(
    "env,message",
    [
        ({"VECTOR_TRUNCATE_TABLES": "langchain_pg_collection,langchain_pg_embedding"}, "never truncated"),
        ({"VECTOR_TRUNCATE_TABLES": "other"}, "not in VECTOR_SUPPORTED_TABLES"),
        ({"VECTOR_PROGRESS_EVERY": "0"}, "positive"),
        ({"VECTOR_PROGRESS_EVERY": "lots"}, "must be a number"),
        ({"VECTOR_BACKUP_DIRECTORY": "../elsewhere"}, "single directory name"),
        ({"VECTOR_DB_URL": "mysql://x@y/z"}, "must start with postgresql://"),
        ({"VECTOR_SPLIT_WORKERS": "0"}, "between 1 and 16"),
        ({"VECTOR_SPLIT_MIN_MB": "-1"}, "0 or more"),
    ],
)
def test_invalid_settings_are_clear_errors(env, message):
    with pytest.raises(ConfigurationError, match=message):
        load_settings(env)


@pytest.mark.parametrize("task_id", ["../etc", "a/b", "", "x" * 129, "a b", "a\x00b"])
def test_task_ids_outside_the_seeds_pattern_are_refused(task_id):
    with pytest.raises(ConfigurationError, match="task id"):
        load_settings({}).backup_directory(task_id)
    with pytest.raises(ConfigurationError, match="task id"):
        build_vector_workflow(task_id, settings=load_settings({}))


def test_nothing_requested_builds_nothing():
    assert build_vector_workflow("t", backup=False, truncate=False, settings=load_settings({})) is None


def test_backup_only_is_the_chord_of_a_task_per_table_and_per_split_worker():
    when = datetime(2025, 7, 20, 12, 10, 7)
    workflow = build_vector_workflow("t1", truncate=False, settings=load_settings({}), now=when)
    assert isinstance(workflow, chord)
    # The embedding table is range-split by default: one task per split worker.
    assert [t.args[0] for t in workflow.tasks] == [
        "langchain_pg_collection",
        "langchain_pg_embedding",
        "langchain_pg_embedding",
    ]
    assert [t.kwargs.get("split") for t in workflow.tasks] == [False, True, True]
    assert len({t.freeze().id for t in workflow.tasks}) == 3
    single = build_vector_workflow("t1", settings=load_settings({"VECTOR_SPLIT_WORKERS": "1"}), now=when)
    assert [t.args[0] for t in single.tasks] == ["langchain_pg_collection", "langchain_pg_embedding"]
    three = load_settings({"VECTOR_SPLIT_WORKERS": "3", "VECTOR_SPLIT_TABLES": "langchain_pg_collection"})
    assert [t.args[0] for t in build_vector_workflow("t1", settings=three, now=when).tasks] == [
        "langchain_pg_collection"
    ] * 3 + ["langchain_pg_embedding"]
    assert workflow.body.name == "vector.backup_vector_tables"
    request = workflow.body.args[0]
    assert len(request.pop("run_id")) == 32
    assert abs(request.pop("requested_at") - time.time()) < 60  # truncate's deadline counts from it
    assert request == {
        "task_id": "t1",
        "timestamp": "20250720_121007",
        "truncate_requested": False,
        "external_db": False,
    }


@pytest.mark.parametrize("backup", [True, False])
def test_truncate_implies_backup_and_runs_after_the_chord_body(backup):
    workflow = build_vector_workflow("t1", backup=backup, truncate=True, settings=load_settings({}))
    # Celery folds `chord | task` into a chord whose body is the chain body | task.
    assert isinstance(workflow, chord) and isinstance(workflow.body, _chain)
    assert [t.name for t in workflow.body.tasks] == [
        "vector.backup_vector_tables",
        "vector.truncate_vector_tables",
    ]
    assert workflow.body.tasks[0].args[0]["truncate_requested"] is True


def test_task_arguments_never_carry_the_connection_string():
    workflow = build_vector_workflow("t1", truncate=True, settings=load_settings({"VECTOR_DB_URL": URL}))
    assert "s3cr3t" not in repr(workflow) and "db.example" not in repr(workflow)


@pytest.mark.parametrize(
    "size,text", [(0, "0.0 B"), (1023, "1023.0 B"), (782_336, "764.0 KB"), (2_202_010, "2.1 MB")]
)
def test_sizes_read_like_the_seeds(size, text):
    assert format_size(size) == text


def test_the_visibility_timeout_is_set_in_all_three_places_celery_reads_it():
    from worker import app

    assert app.conf.visibility_timeout == 12 * 3600
    assert app.conf.broker_transport_options["visibility_timeout"] == app.conf.visibility_timeout
    assert app.conf.result_backend_transport_options["visibility_timeout"] == app.conf.visibility_timeout


def test_run_lifecycle_settings_are_read_and_checked():
    runs = load_settings({"VECTOR_LIVENESS_WINDOW": "12", "VECTOR_TRUNCATE_DEADLINE": "600"}).runs
    assert (runs.liveness_window_s, runs.beat_every_s, runs.truncate_deadline_s) == (12.0, 2.0, 600.0)
    assert load_settings({}).runs.liveness_window_s == 30.0
    assert load_settings({}).runs.truncate_deadline_s == 6 * 3600.0
    with pytest.raises(ConfigurationError, match="VECTOR_LIVENESS_WINDOW must be at least 3 seconds"):
        load_settings({"VECTOR_LIVENESS_WINDOW": "1"})
    with pytest.raises(ConfigurationError, match="must be positive"):
        load_settings({"VECTOR_TRUNCATE_DEADLINE": "0"})
