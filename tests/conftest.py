"""Suite-wide hooks: every test under tests/integration/ and tests/faults/ is an integration test.

They get the `integration` marker (declared in pyproject.toml) from where they live, so a new test
file cannot forget it, and `uv run pytest -m "not integration"` runs the fast suite (tests/unit)
alone: no PostgreSQL, Redis or worker process needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEGRATION_DIRS = (TESTS / "integration", TESTS / "faults")


def is_integration(path: Path) -> bool:
    path = path.resolve()
    return any(path.is_relative_to(directory) for directory in INTEGRATION_DIRS)


# tryfirst: pytest's own `-m` deselection runs in this hook too, and must see the marker.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_integration(item.path) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
