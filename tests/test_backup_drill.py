"""Backup and restore drill under purchase load (issue 8, "Faults"; docs/operations.md).

On a private PostgreSQL server (``scripts/loadkit.py``), with tills posting
purchases through gunicorn: a REPEATABLE READ transaction exports its
snapshot and reads every account's balance in it; ``pg_dump -Fc
--snapshot=<it>`` dumps exactly that moment while the purchases go on; the
dump is restored with ``pg_restore`` into a new database, where
``manage.py check_ledger`` must pass and every balance (and every row count of
the ledger) must equal the snapshot's, while the source has moved on.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from django.conf import settings

from members.codes import code_for
from tests.faults import wait_until
from tests.scripts_import import script_module

lk = script_module("loadkit")
logger = logging.getLogger(__name__)

SOURCE_DB = "loyalty_drill"
RESTORED_DB = "loyalty_drill_restored"
# What must be identical between the snapshot and the restored database.
COUNTS = {
    "purchases": "SELECT COUNT(*) FROM points_purchase",
    "entries": "SELECT COUNT(*) FROM points_pointsentry",
    "lots": "SELECT COUNT(*) FROM points_pointslot",
    "allocations": "SELECT COUNT(*) FROM points_pointsallocation",
    "idempotency_keys": "SELECT COUNT(*) FROM loyalty_idempotencykey",
    "points_total": "SELECT COALESCE(SUM(balance), 0) FROM points_pointsaccount",
}


@dataclass
class Drill:
    pg: Any
    env: dict[str, str]
    data: dict[str, Any]
    server: Any

    def connect(self, dbname: str) -> Any:
        return psycopg2.connect(dbname=dbname, **self.pg.params())

    def read(self, dbname: str) -> tuple[dict[int, int], dict[str, int]]:
        conn = self.connect(dbname)
        try:
            with conn, conn.cursor() as cursor:
                return _balances_and_counts(cursor)
        finally:
            conn.close()


def _balances_and_counts(cursor: Any) -> tuple[dict[int, int], dict[str, int]]:
    cursor.execute("SELECT member_id, balance FROM points_pointsaccount")
    balances = dict(cursor.fetchall())
    counts = {}
    for name, sql in COUNTS.items():
        cursor.execute(sql)
        counts[name] = int(cursor.fetchone()[0])
    return balances, counts


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    codes = {
        "LOYALTY_MEMBER_CODE_SECRET": settings.LOYALTY_MEMBER_CODE_SECRET,
        "LOYALTY_MEMBER_CODE_STEP_SECONDS": str(settings.LOYALTY_MEMBER_CODE_STEP_SECONDS),
    }
    with lk.app_stack(SOURCE_DB, tmp_path_factory.mktemp("drill"), env_overrides=codes, members=80, terminals=4) as app:
        yield Drill(app.pg, app.env, app.data, app.server)


def _run(args: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603 - PostgreSQL tools
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started


def test_a_dump_taken_under_purchase_load_restores_to_a_sound_ledger_equal_to_its_snapshot(drill, tmp_path: Path):
    # given four tills posting purchases, some paying with points by member code
    members = drill.data["members"]
    load = lk.PurchaseLoad(
        drill.server.port,
        keys=drill.data["keys"],
        members=members[:20],
        threads=4,
        run="DRILL",
        code_members=members[20:],
        code_for=lambda m: code_for(member_no=m["no"], secret=m["secret"])[0],
    )
    dump = tmp_path / "loyalty.dump"
    snapshot_conn = drill.connect(SOURCE_DB)
    load.start()
    try:
        wait_until(lambda: load.successes() >= 30, timeout=60, what="30 purchases before the dump")
        # when a snapshot is exported mid-load, its balances read, and pg_dump takes exactly that snapshot
        snapshot_conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with snapshot_conn.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot()")
            (snapshot,) = cursor.fetchone()
            at_snapshot = load.successes()
            balances, counts = _balances_and_counts(cursor)
        dump_seconds = _run(
            [
                str(lk.pg_bin() / "pg_dump"),
                *drill.pg.client_args(),
                "-Fc",
                f"--snapshot={snapshot}",
                "-f",
                str(dump),
                SOURCE_DB,
            ]
        )
        during_dump = load.successes() - at_snapshot
        snapshot_conn.rollback()
        # and the tills go on after it
        wait_until(lambda: load.successes() >= at_snapshot + during_dump + 10, timeout=60, what="10 purchases after the dump")
    finally:
        load.stop()
        snapshot_conn.close()
    assert all(a.succeeded for a in load.attempts)

    # when the dump is restored into a new database
    lk.admin_sql(drill.pg.params(), f'CREATE DATABASE "{RESTORED_DB}"')
    restore_seconds = _run(
        [str(lk.pg_bin() / "pg_restore"), *drill.pg.client_args(), "-d", RESTORED_DB, "--exit-on-error", str(dump)]
    )

    # then check_ledger passes on the restored database
    check = lk.manage({**drill.env, "DATABASE_URL": drill.pg.url(RESTORED_DB)}, "check_ledger")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"Ledger OK: {len(balances)} accounts, 0 violations." in check.stdout
    # and every balance, and every count of the ledger, equals the snapshot's
    restored_balances, restored_counts = drill.read(RESTORED_DB)
    assert restored_balances == balances
    assert restored_counts == counts
    # while the source moved on: purchases were recorded after the snapshot, not in the dump
    source_balances, source_counts = drill.read(SOURCE_DB)
    assert source_counts["purchases"] > counts["purchases"]
    assert source_balances != balances
    assert counts["purchases"] >= 30
    logger.info(
        "drill: %s accounts and %s purchases in the snapshot (%s more posted during the dump, %s in the "
        "source at the end); dump %.1f s, %d KiB; restore %.1f s; check_ledger 0 violations; balances equal",
        len(balances),
        counts["purchases"],
        during_dump,
        source_counts["purchases"],
        dump_seconds,
        dump.stat().st_size // 1024,
        restore_seconds,
    )
