"""docker-compose.yml, Procfile and Dockerfile: the structure an operator relies on.

No Docker engine runs here, so these read the files: services and their order of start, the shared
environment, what may be scaled, and that every command they run is a real `ledgerq` subcommand.
"""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import VARIABLES
from api.settings import Settings as ApiSettings
from cli.main import build_parser, dispatcher_command, flower_command, worker_command
from worker.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"migrate", "api", "worker", "dispatcher", "beat", "flower"}


def is_subcommand(name: str) -> bool:
    try:
        return callable(build_parser().parse_args([name]).handler)
    except SystemExit:
        return False


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_compose_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"postgres", "redis"} | APP_SERVICES


def test_ledgerq_services_build_one_image_and_run_ledgerq_subcommands(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        assert service["image"] == "ledgerq:latest", name
        command = service["command"]
        # Each service runs the subcommand of its name.
        assert command == ["ledgerq", name], (name, command)
        assert is_subcommand(name)
    # Servers come from pinned public images, never built here.
    for name in ("postgres", "redis"):
        assert "build" not in services[name]
        assert re.fullmatch(r"[a-z]+:\d+", services[name]["image"]), services[name]["image"]


def test_compose_start_order(services: dict[str, dict[str, Any]]) -> None:
    assert _depends(services["migrate"]) == {"postgres": "service_healthy"}
    for name in ("api", "worker", "dispatcher", "beat"):
        assert _depends(services[name]) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }, name
    assert _depends(services["flower"]) == {"redis": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_keeps_data_and_redis_never_evicts(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "pgdata:/var/lib/postgresql" in services["postgres"]["volumes"]
    assert "redisdata:/data" in services["redis"]["volumes"]
    assert {"pgdata", "redisdata"} <= set(compose["volumes"])
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_compose_environment_is_one_shared_block(services: dict[str, dict[str, Any]]) -> None:
    env = services["api"]["environment"]
    for name in APP_SERVICES:
        assert services[name]["environment"] == env, name
    assert env["LEDGERQ_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["LEDGERQ_DATABASE_URL"]
    assert env["LEDGERQ_REDIS_URL"] == "redis://redis:6379/0"
    # The API refuses to start without a signing key: compose must refuse too, with a message.
    assert env["LEDGERQ_SECRET_KEY"].startswith("${LEDGERQ_SECRET_KEY:?")
    known = {v.name for v in VARIABLES}
    assert set(env) <= known, set(env) - known
    assert env["LEDGERQ_WORKER_PARTITIONS"] == "auto"


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "dispatcher"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name]
    # Nothing else may pin a name either (`--scale` of any service would clash with it).
    assert not any("container_name" in s for s in services.values())


def test_flower_watches_the_broker_on_5555(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["command"] == ["ledgerq", "flower"]
    assert flower["environment"]["LEDGERQ_FLOWER_PORT"] == "5555"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert services["api"]["ports"] == ["8000:8000"]

    settings = Settings.from_env(
        {
            "LEDGERQ_DATABASE_URL": "postgresql://ledgerq@postgres/ledgerq",
            "LEDGERQ_REDIS_URL": "redis://redis:6379/0",
            "LEDGERQ_FLOWER_HOST": "0.0.0.0",
        }
    )
    argv = flower_command(settings)
    assert argv[1:6] == ["-m", "celery", "-A", "worker.celery_app:app", "flower"]
    assert "--port=5555" in argv and "--address=0.0.0.0" in argv
    # Flower sees tasks through events, which workers send only when asked: Flower asks (its
    # enable_events option broadcasts the enable_events control command), workers run without -E.
    assert "--enable_events=True" in argv
    worker = worker_command(settings, None, pid=1)
    assert "-E" not in worker and "--task-events" not in worker
    # enable_events needs the worker's event dispatcher: without -E and gossip, heartbeats keep it.
    assert "--without-heartbeat" not in worker


def test_flower_knows_its_enable_events_option() -> None:
    # Flower silently drops command-line options it does not know: a renamed option would leave
    # the workers' task events off and Flower showing no task.
    from flower.command import is_flower_option
    from flower.options import default_options

    assert "enable_events" in default_options
    assert is_flower_option("--enable_events=True")


def test_celery_sends_no_task_events_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERQ_DATABASE_URL", "postgresql://x@h/d")
    monkeypatch.setenv("LEDGERQ_REDIS_URL", "redis://h/0")
    get_settings.cache_clear()
    try:
        config = runpy.run_path(str(ROOT / "worker" / "celeryconfig.py"))
    finally:
        get_settings.cache_clear()
    assert config["worker_send_task_events"] is False
    assert config["task_send_sent_event"] is False
    # Remote control (Celery's default) carries enable_events from Flower to the workers.
    assert config.get("worker_enable_remote_control", True) is True


def test_auto_workers_start_on_the_control_queue_only() -> None:
    settings = Settings.from_env(
        {"LEDGERQ_DATABASE_URL": "postgresql://x@h/d", "LEDGERQ_REDIS_URL": "redis://h/0"}
    )
    assert settings.worker_partitions is None  # the default is `auto`
    argv = worker_command(settings, None, pid=7)
    assert argv[argv.index("-Q") + 1] == "ledgerq.control"
    assert argv[argv.index("-n") + 1] == "ledgerq-auto-7@%h"
    fixed = Settings.from_env(
        {
            "LEDGERQ_DATABASE_URL": "postgresql://x@h/d",
            "LEDGERQ_REDIS_URL": "redis://h/0",
            "LEDGERQ_WORKER_PARTITIONS": "0-3",
        }
    )
    assert fixed.worker_partitions == (0, 1, 2, 3)


def test_the_dispatcher_consumes_only_the_webhook_queue() -> None:
    """Webhook deliveries never share a queue (or a process) with the partition workers: a slow
    receiver must not delay money. The dispatcher's app takes no partition leases."""
    settings = ApiSettings.from_env(
        {"LEDGERQ_DATABASE_URL": "postgresql://x@h/d", "LEDGERQ_REDIS_URL": "redis://h/0"}
    )
    argv = dispatcher_command(settings, pid=9)
    assert argv[1:6] == ["-m", "celery", "-A", "worker.webhooks:app", "worker"]
    assert argv[argv.index("-Q") + 1] == "ledgerq.webhooks"
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[argv.index("--concurrency") + 1] == str(settings.webhook_concurrency) == "8"
    assert argv[argv.index("-n") + 1] == "ledgerq-dispatcher-9@%h"
    assert (
        dispatcher_command(settings, pid=9, concurrency=3)[argv.index("--concurrency") + 1] == "3"
    )
    assert "ledgerq.webhooks" not in worker_command(settings, None, pid=9)
    assert "ledgerq.webhooks" not in worker_command(settings, list(range(8)), pid=9)
    assert is_subcommand("dispatcher")


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = [line.split(":", 1) for line in lines if line and not line.startswith("#")]
    return {name.strip(): command.strip() for name, command in entries}


def test_procfile_runs_every_process_type() -> None:
    procfile = _procfile()
    assert set(procfile) == {"release", "web", "worker", "dispatcher", "beat", "flower"}
    expected = {
        "release": "migrate",
        "web": "api",
        "worker": "worker",
        "dispatcher": "dispatcher",
        "beat": "beat",
        "flower": "flower",
    }
    for name, command in procfile.items():
        argv = shlex.split(command)
        assert argv == ["ledgerq", expected[name]], (name, argv)
        assert is_subcommand(expected[name])
    assert not is_subcommand("no-such-command")


def test_dockerfile_builds_the_image_every_service_runs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "uv sync --frozen --no-dev" in text
    for directory in ("api", "worker", "domain", "migrations"):
        assert f"COPY {directory} ./{directory}" in text
    assert re.search(r"^EXPOSE 8000 5555$", text, re.MULTILINE)
    assert re.search(r"^USER ledgerq$", text, re.MULTILINE), "servers must not run as root"
    assert 'CMD ["ledgerq", "api"]' in text
