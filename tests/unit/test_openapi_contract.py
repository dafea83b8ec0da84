"""The OpenAPI document is the public contract: it changes only on purpose.

The app is built exactly as the server builds it (`api.app.create_litestar`), without any server:
building it connects to nothing, so the URLs and the secret are dummies. It is built in a child
process with a clean `LEDGERQ_*` environment, so the document depends on the code alone (and the
app's logging setup does not leak into this test process).

The whole document is compared with `tests/unit/openapi.snapshot.json`: every path, operation,
parameter, request body and response schema, and the components. A change that is meant must
update the snapshot in the same commit and say why in CHANGELOG.md; regenerate it with

    uv run python -m tests.unit.test_openapi_contract
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")

_BUILD = """
import json, sys
from api.app import create_litestar
from api.settings import Settings
app = create_litestar(Settings.from_env())
json.dump(app.openapi_schema.to_schema(), sys.stdout)
"""

DUMMY_ENV = {
    # Nothing connects while the app is built; these only have to parse.
    "LEDGERQ_DATABASE_URL": "postgresql://openapi@127.0.0.1:9/openapi",
    "LEDGERQ_REDIS_URL": "redis://127.0.0.1:9/0",
    "LEDGERQ_SECRET_KEY": "openapi-contract-test-secret-key-0123456789",
    "LEDGERQ_LOG_LEVEL": "WARNING",
}


def build_document() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
    env.update(DUMMY_ENV)
    done = subprocess.run(
        [sys.executable, "-c", _BUILD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _differences(old: Any, new: Any, where: str = "$") -> list[str]:
    """Where two JSON values differ, as paths (the first few), so a failure says what changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for k in sorted(old.keys() | new.keys()):
            if k not in new:
                found.append(f"{where}.{k}: removed")
            elif k not in old:
                found.append(f"{where}.{k}: added")
            else:
                found += _differences(old[k], new[k], f"{where}.{k}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    return [] if old == new else [f"{where}: {json.dumps(old)[:200]} -> {json.dumps(new)[:200]}"]


def test_openapi_document_matches_the_snapshot() -> None:
    document = build_document()
    snapshot = json.loads(SNAPSHOT.read_text())
    changed = _differences(snapshot, document)
    assert not changed, (
        "the OpenAPI document changed (regenerate with `uv run python -m "
        "tests.unit.test_openapi_contract` only if the change is meant):\n"
        + "\n".join(changed[:40])
    )


def test_snapshot_covers_the_whole_contract() -> None:
    """The snapshot is not vacuous: it holds the routes, their shapes and the components."""
    snapshot = json.loads(SNAPSHOT.read_text())
    operations = {
        op["operationId"]
        for item in snapshot["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert {
        "submitOperation",
        "getAccount",
        "listEntries",
        "adminDeposit",
        "listClients",
    } <= operations
    assert {"AccountOut", "OperationOut", "Problem"} <= set(snapshot["components"]["schemas"])
    assert set(snapshot["components"]["securitySchemes"]) == {"basic", "bearer", "apiKey"}


if __name__ == "__main__":
    SNAPSHOT.write_text(render(build_document()))
    print(f"wrote {SNAPSHOT.relative_to(ROOT)}")
