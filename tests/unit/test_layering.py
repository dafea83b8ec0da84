"""The API's layers stay apart (issue 10): controllers import no other controller, every row ->
response mapping is in api/presenters.py, every paged route goes through api/pagination.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTROLLERS = sorted((ROOT / "api" / "controllers").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_controllers_do_not_import_each_other() -> None:
    for path in CONTROLLERS:
        others = {m for m in imported_modules(path) if m.startswith("api.controllers")}
        assert not others, f"{path.name} imports {sorted(others)}"


def constructed(path: Path) -> set[str]:
    return {
        node.func.id
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_what_presenters_build_is_built_nowhere_else() -> None:
    """A response body built from rows has one mapping: the presenter's."""
    import api.schemas as schemas

    presented = constructed(ROOT / "api" / "presenters.py") & set(dir(schemas))
    assert {"AccountOut", "OperationOut", "EntryOut", "ClientOut", "PortfolioOut"} <= presented
    others = [*CONTROLLERS, ROOT / "api" / "reports.py", ROOT / "api" / "operations.py"]
    for path in others:
        built = constructed(path) & presented
        assert not built, f"{path.relative_to(ROOT)} builds {sorted(built)}"


def test_presenters_do_no_io() -> None:
    modules = imported_modules(ROOT / "api" / "presenters.py")
    assert not {m for m in modules if m.split(".")[0] in {"sqlalchemy", "redis", "litestar"}}
    assert "api.state" not in modules
