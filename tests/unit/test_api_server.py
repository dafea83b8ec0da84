"""LEDGERQ_API_SERVER: its validation, and the command lines of both servers (granian's checked
against granian's own option parser, as a renamed option would fail only at deploy)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from api.granian_app import behind_proxies
from api.settings import API_SERVERS, VARIABLES, Settings
from cli.main import GRANIAN_LOG_CONFIG, api_command
from worker.settings import SettingsError

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
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
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
        sys.executable, "-m", "api.granian_app", "api.granian_app:create_app", "--factory",
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
    assert argv[1:3] == ["-m", "api.granian_app"]
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


def test_no_proxy_is_trusted_by_default() -> None:
    [default] = [v.default for v in VARIABLES if v.name == "LEDGERQ_TRUSTED_PROXIES"]
    assert default == ""
    assert settings().trusted_proxies == ""
    assert settings(LEDGERQ_TRUSTED_PROXIES=" , ").trusted_proxies == ""


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("127.0.0.1", "127.0.0.1"),
        (" 10.0.0.0/8, 192.0.2.7 ,::1,fd00::/8", "10.0.0.0/8,192.0.2.7,::1,fd00::/8"),
        ("*", "*"),
        ("10.0.0.1, *", "*"),
    ],
)
def test_trusted_proxies_are_addresses_networks_or_any(raw: str, parsed: str) -> None:
    assert settings(LEDGERQ_TRUSTED_PROXIES=raw).trusted_proxies == parsed


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "10.0.0.1/8", "127.0.0.1:8000"])
def test_a_mistyped_proxy_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(SettingsError, match=f"LEDGERQ_TRUSTED_PROXIES.*{re.escape(repr(bad))}"):
        settings(LEDGERQ_TRUSTED_PROXIES=f"127.0.0.1,{bad}")


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_proxy_headers_on_the_command_line(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn is told either way (its defaults trust 127.0.0.1); granian's app reads the setting."""
    unset = api_command(settings(LEDGERQ_API_SERVER=server))
    trusted = api_command(
        settings(LEDGERQ_API_SERVER=server, LEDGERQ_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8")
    )
    if server == "granian":
        assert unset == trusted
        assert not any("proxy" in arg or "forwarded" in arg for arg in unset)
        return
    assert unset[-1] == "--no-proxy-headers"
    assert "--proxy-headers" not in unset and "--forwarded-allow-ips" not in unset
    assert trusted[-3:] == ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8"]
    assert "--no-proxy-headers" not in trusted
    # As uvicorn parses them: FORWARDED_ALLOW_IPS in the environment changes nothing.
    from uvicorn.main import main as uvicorn_cli

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    for argv, headers, allowed in ((unset, False, None), (trusted, True, "127.0.0.1,10.0.0.0/8")):
        params = uvicorn_cli.make_context("uvicorn", argv[3:]).params
        assert (params["proxy_headers"], params["forwarded_allow_ips"]) == (headers, allowed)


def test_granian_wraps_the_app_only_when_a_proxy_is_trusted() -> None:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    app: Any = object()
    assert behind_proxies(app, "") is app
    wrapped = behind_proxies(app, "127.0.0.1,10.0.0.0/8")
    assert isinstance(wrapped, ProxyHeadersMiddleware) and wrapped.app is app
    assert "10.1.2.3" in wrapped.trusted_hosts and "127.0.0.2" not in wrapped.trusted_hosts
    assert behind_proxies(app, "*").trusted_hosts.always_trust  # type: ignore[union-attr]


FORK_RACE = """
import os, signal, sys, time
from api import granian_app

parent_saw = []
signal.signal(signal.SIGTERM, lambda signum, frame: parent_saw.append(signum))
granian_app.register_fork_hooks()
pid = os.fork()
if pid == 0:
    # The worker, as if still importing the app when its parent passes SIGTERM on.
    time.sleep(0.5)
    os._exit(0 if granian_app.held == [signal.SIGTERM] and not parent_saw else 1)
os.kill(pid, signal.SIGTERM)  # at once: before the child could have run any code of its own
os.kill(os.getpid(), signal.SIGTERM)  # the parent's own handler still gets its signals
_, status = os.waitpid(pid, 0)
time.sleep(0.1)
print(os.waitstatus_to_exitcode(status), parent_saw == [signal.SIGTERM])
"""


def test_a_stop_signal_sent_the_moment_a_granian_worker_forks_is_held() -> None:
    # CI once lost a SIGTERM that reached a granian worker between its fork and the app's import:
    # the worker ran on until killed. With the hooks, the signal waits for the worker's handler.
    out = subprocess.run(
        [sys.executable, "-c", FORK_RACE], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == ["0", "True"], out.stderr
