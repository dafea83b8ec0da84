"""LEDGERQ_API_SERVER: its validation, and the command lines of both servers (granian's checked
against granian's own option parser, as a renamed option would fail only at deploy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import uvicorn

from api.cli import GRANIAN_LOG_CONFIG, api_command
from api.granian_app import forwarded_allow_ips
from worker.settings import API_SERVERS, VARIABLES, Settings, SettingsError

BASE = {
    "LEDGERQ_DATABASE_URL": "postgresql://postgres@127.0.0.1/ledgerq",
    "LEDGERQ_REDIS_URL": "redis://127.0.0.1:6379/0",
}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_the_default_server_is_one_of_the_two() -> None:
    [default] = [v.default for v in VARIABLES if v.name == "LEDGERQ_API_SERVER"]
    assert API_SERVERS == ("uvicorn", "granian")
    assert default in API_SERVERS
    assert settings().api_server == default
    assert settings(LEDGERQ_API_SERVER="").api_server == default


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_either_server_can_be_chosen(server: str) -> None:
    assert settings(LEDGERQ_API_SERVER=server).api_server == server


@pytest.mark.parametrize("bad", ["hypercorn", "Granian", " uvicorn"])
def test_another_server_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(SettingsError, match="LEDGERQ_API_SERVER must be uvicorn or granian"):
        settings(LEDGERQ_API_SERVER=bad)


def test_uvicorn_command_line() -> None:
    argv = api_command(
        settings(
            LEDGERQ_API_SERVER="uvicorn",
            LEDGERQ_API_HOST="0.0.0.0",
            LEDGERQ_API_PORT="9001",
            LEDGERQ_API_WORKERS="3",
        )
    )
    assert argv == [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "0.0.0.0", "--port", "9001", "--workers", "3",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log",
    ]  # fmt: skip


def test_granian_command_line() -> None:
    argv = api_command(
        settings(
            LEDGERQ_API_SERVER="granian",
            LEDGERQ_API_HOST="0.0.0.0",
            LEDGERQ_API_PORT="9001",
            LEDGERQ_API_WORKERS="3",
            LEDGERQ_MAX_WAIT="20",
            LEDGERQ_LOG_LEVEL="debug",
        )
    )
    assert argv == [
        sys.executable, "-m", "granian", "api.granian_app:create_app", "--factory",
        "--interface", "asgi",
        "--host", "0.0.0.0", "--port", "9001", "--workers", "3",
        "--workers-kill-timeout", "30",
        "--loop", "uvloop", "--http", "1", "--backlog", "2048", "--no-access-log",
        "--log-level", "debug", "--log-config", str(GRANIAN_LOG_CONFIG),
    ]  # fmt: skip


@pytest.mark.parametrize(("ours", "granians"), [("WARNING", "warning"), ("NOTSET", "info")])
def test_granian_log_level_follows_ours(ours: str, granians: str) -> None:
    argv = api_command(settings(LEDGERQ_API_SERVER="granian", LEDGERQ_LOG_LEVEL=ours))
    assert argv[argv.index("--log-level") + 1] == granians


def test_granian_understands_its_command_line() -> None:
    from granian.cli import cli
    from granian.constants import HTTPModes, Interfaces, Loops

    argv = api_command(settings(LEDGERQ_API_SERVER="granian", LEDGERQ_API_WORKERS="2"))
    assert argv[1:3] == ["-m", "granian"]
    # Parsed as granian would, without serving: unknown options or bad values raise here.
    ctx = cli.make_context("granian", argv[3:])
    params = ctx.params
    assert params["app"] == "api.granian_app:create_app"
    assert params["factory"] is True
    assert params["interface"] == Interfaces.ASGI
    assert params["http"] == HTTPModes.http1
    assert params["loop"] == Loops.uvloop
    assert (params["workers"], params["backlog"], params["workers_kill_timeout"]) == (2, 2048, 40)
    assert params["log_access_enabled"] is False
    assert params["log_config"] == GRANIAN_LOG_CONFIG


def test_granian_lines_come_out_in_our_log_format() -> None:
    # In a process of its own, as granian's parent process does it: its logging setup with our
    # --log-config, then one of its lines.
    script = (
        "import json, logging, sys\n"
        "from granian.log import LogLevels, configure_logging\n"
        "configure_logging(LogLevels.info, json.loads(open(sys.argv[1]).read()))\n"
        "logging.getLogger('_granian').info('Listening at: http://127.0.0.1:8000')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(GRANIAN_LOG_CONFIG)],
        env={**os.environ, "LEDGERQ_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == ""  # granian's own handler writes to stdout; ours to stderr
    [line] = [json.loads(x) for x in result.stderr.splitlines() if x.strip()]
    assert line["event"] == "Listening at: http://127.0.0.1:8000"
    assert (line["logger"], line["level"]) == ("_granian", "info")
    assert "timestamp" in line


def test_granian_trusts_the_proxies_uvicorn_trusts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert forwarded_allow_ips() == uvicorn.Config("api.app:create_app").forwarded_allow_ips
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8,192.0.2.7")
    assert forwarded_allow_ips() == uvicorn.Config("api.app:create_app").forwarded_allow_ips
    assert forwarded_allow_ips() == "10.0.0.0/8,192.0.2.7"
