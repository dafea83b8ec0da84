"""The short fault suite (CI): every scenario of tests/faults/matrix.py once, on one stack.

The full suite and its report: `uv run python -m tests.faults` (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.matrix import SCENARIOS, Scenario, run_scenario
from tests.faults.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("faults"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_exactly_once_through_the_fault(stack: Stack, scenario: Scenario) -> None:
    outcome = asyncio.run(run_scenario(stack, scenario, warmup=2.0, after=5.0))
    report = json.dumps(outcome.as_dict(), indent=1)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted(Path(stack.root / "logs").glob("*.log"))
    )
    assert outcome.accepted > 0, report
    assert (outcome.lost, outcome.doubled, outcome.refused_but_stored) == (0, 0, 0), report
    assert outcome.unanswered == 0, report
    assert outcome.invariants == [], report
    assert outcome.notes == [], report + logs
    assert outcome.follower[0] == "succeeded", report + logs
    # Clients see the fault as retryable answers or dropped connections, never as a 500.
    assert not [k for k in outcome.clients_saw if k.startswith("500")], report + logs
