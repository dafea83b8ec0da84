"""The full fault suite: `uv run python -m tests.faults [--rounds N] [--after S] [--json FILE]`.

Starts its own stack (private PostgreSQL and Redis), runs every scenario `--rounds` times under
steady load and prints the fault matrix (Markdown) for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tests.faults.matrix import SCENARIOS, Outcome, run_scenario, table
from tests.faults.stack import Stack


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before a fault")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after recovery")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument(
        "--dir", type=Path, help="keep servers' data and logs here (default: temporary)"
    )
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="ledgerq-faults-") as tmp:
        stack = Stack(args.dir or Path(tmp))
        try:
            stack.start()
            for _ in range(args.rounds):
                for scenario in scenarios:
                    outcome = asyncio.run(run_scenario(stack, scenario, args.warmup, args.after))
                    print(json.dumps(outcome.as_dict()), flush=True)
                    outcomes.append(outcome)
        finally:
            stack.stop()
    if args.json:
        args.json.write_text(json.dumps([o.as_dict() for o in outcomes], indent=1))
    print(table(outcomes))
    return 0 if all(o.exactly_once for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
