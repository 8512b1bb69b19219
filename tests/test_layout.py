"""Imports point one way: worker/ -> tasks/client/ -> tasks/ (app, names, chain) ->
common/. Read from the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "tasks", "worker")
# Task-side modules a task definition needs that declare no task themselves.
TASK_SIDE = {"tasks.run_guard"}
# The client, and the pipeline's import path that re-exports it.
CLIENT = ("tasks.client", "tasks.pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(encoding="utf-8"))


def imports(name: str) -> set[str]:
    """Every module `name` imports, anywhere in it; `from a import b` counts as `a.b`
    when `a.b` is a module of ours, else as `a`."""
    found = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules() else node.module)
    return found


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def declares_tasks(name: str) -> bool:
    """Whether the module declares a Celery task (`@app.task`, `@shared_task`, ...)."""
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target).split(".")[-1] in ("task", "shared_task"):
                    return True
    return False


def task_definitions() -> set[str]:
    return {name for name in modules() if within(name, "tasks") and declares_tasks(name)} | TASK_SIDE


def reachable(name: str) -> set[str]:
    """Our modules `name` imports, directly or through others of ours."""
    seen, todo = set(), [name]
    while todo:
        for target in imports(todo.pop()):
            module = next((m for m in (target, target.rsplit(".", 1)[0]) if m in modules()), None)
            if module is not None and module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def wrong_imports(sources, forbidden) -> list[str]:
    return sorted(
        f"{source} imports {target}"
        for source in modules()
        if sources(source)
        for target in imports(source)
        if forbidden(target)
    )


def test_the_engine_imports_neither_celery_nor_anything_above_it():
    assert (
        wrong_imports(
            lambda m: within(m, "common"), lambda t: within(t, "celery", "kombu", "tasks", "worker")
        )
        == []
    )


def test_no_task_module_imports_the_worker_package():
    assert wrong_imports(lambda m: within(m, "tasks"), lambda t: within(t, "worker")) == []


def test_the_app_module_imports_no_task():
    # `tasks.names` holds strings only: the app sends alerts to `vector.send_alert` by name.
    assert not any(within(t, "tasks", "worker") for t in imports("tasks.app") - {"tasks.names"})


def test_clients_never_reach_a_task_definition():
    definitions = task_definitions()
    assert {"tasks.vector_backup", "tasks.backup_sets", "tasks.scheduled"} <= definitions
    for client in (m for m in modules() if within(m, *CLIENT)):
        assert not reachable(client) & definitions, f"{client} reaches {reachable(client) & definitions}"


def test_only_the_beat_tasks_use_the_client():
    users = {m for m in task_definitions() if any(within(t, *CLIENT) for t in imports(m))}
    assert users == {"tasks.scheduled"}  # the nightly backup starts a run like any caller


def test_the_processes_load_no_task_definition():
    """A worker loads the task modules from celeryconfig's `include`; the CLI, the API and
    the demo send by name."""
    definitions = task_definitions()
    assert wrong_imports(lambda m: within(m, "worker"), lambda t: t in definitions) == []


def test_a_client_process_loads_no_task_code_and_sends_to_the_configured_broker():
    script = (
        "import sys\n"
        "from common.config import load_settings\n"
        "from tasks.pipeline import enqueue_vector_management\n"
        "from tasks.workflow import build_vector_workflow\n"
        "workflow = build_vector_workflow('t1', truncate=True, settings=load_settings({}))\n"
        "print(workflow.app.conf.broker_url)\n"
        "print(workflow.body.tasks[1].app.conf.result_backend)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'tasks')))\n"
    )
    broker = "redis://127.0.0.1:1/5"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERY_BROKER_URL": broker}
    env.pop("CELERY_RESULT_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    sent_to, results_in, loaded = done.stdout.splitlines()
    assert sent_to == broker and results_in == broker
    loaded_modules = set(ast.literal_eval(loaded))
    assert not loaded_modules & task_definitions()
    assert not any(within(m, "worker") for m in loaded_modules)
