"""The README stays true to the code: its two opening commands and one table row per variable."""

from __future__ import annotations

from pathlib import Path

from worker.settings import VARIABLES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_variable_has_a_row_in_the_configuration_table() -> None:
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in README.splitlines()
        if line.startswith("| `LEDGERQ_")
    }
    assert {v.name for v in VARIABLES} <= rows, {v.name for v in VARIABLES} - rows


def test_readme_opens_with_the_run_and_test_commands() -> None:
    blocks = README.split("```sh\n")[1:3]
    assert [b.split("\n", 1)[0] for b in blocks] == [
        "pip install uv && uv run ledgerq dev",
        "pip install uv && uv run pytest",
    ]
