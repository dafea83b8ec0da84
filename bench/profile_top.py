"""The busiest frames of a `py-spy record --format raw` profile, as shares of the busy samples.

    py-spy record -p PID -d 15 -r 200 -f raw -o api.txt      # while a load runs
    uv run python -m bench.profile_top api.txt [ROOT_FRAME] [N]

A frame's share is inclusive: the samples whose stack contains it. Only stacks through ROOT_FRAME
count (default `Runner.run`, the API's event loop; `fast_trace_task` for a Celery pool child), so
threads that only wait (uvicorn's supervisor pipe, idle pool threads) do not dilute the figures.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>[^ ]+) \((?P<file>[^:)]+)")
# This checkout's root, stripped from our own frames' paths as site-packages is from libraries'.
_ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def frame_name(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"].split("site-packages/")[-1].split(_ROOT)[-1]
    return f"{match['name']} ({path})"


def top_frames(lines: list[str], root: str, limit: int) -> tuple[int, list[tuple[str, int]]]:
    busy = 0
    inclusive: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or root not in stack:
            continue
        samples = int(count)
        busy += samples
        for name in {frame_name(f) for f in stack.split(";")}:
            inclusive[name] += samples
    return busy, inclusive.most_common(limit)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    root = argv[1] if len(argv) > 1 else "Runner.run"
    limit = int(argv[2]) if len(argv) > 2 else 40
    busy, frames = top_frames(Path(argv[0]).read_text().splitlines(), root, limit)
    print(f"{argv[0]}: {busy} busy samples under {root}")
    for name, samples in frames:
        print(f"{100 * samples / max(busy, 1):5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
