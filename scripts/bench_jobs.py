"""The nightly jobs' figures of ``make bench`` again (expiry with purchases
coming in, its re-run, tier evaluation and its re-run, ``check_ledger``) on a
fresh copy of generated data, with this checkout's code: about a quarter of an
hour at SCALE=full instead of a full run's hour and a quarter
(docs/performance.md, session 5).

    python scripts/bench_jobs.py TEMPLATE RATE MEMBER_OFFSET

TEMPLATE: a database holding a bench's data as generated, before any job ran
(``make bench SCALE=full BENCH_KEEP_TEMPLATE=1`` keeps one as
``loyalty_bench_template``, with its terminal keys in
``var/bench/work/template_keys.txt``). ``loyalty_bench`` is re-created from it, migrated,
and the server checkpointed, so every run starts from the same state (the
first changes after a checkpoint write whole pages to the WAL: the slow end).
RATE: purchases per second during the expiry job (``make bench`` uses half
the purchase throughput it measured). MEMBER_OFFSET: where the members whose
codes the purchases use start (each code serves one purchase).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

CODES = 60_000


def main() -> int:
    template, rate, offset = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    if bench.admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", [template]) is None:
        sys.exit(f"no database {template!r}: make bench SCALE=full BENCH_KEEP_TEMPLATE=1 keeps one")
    env = bench.bench_env("bench-" + secrets.token_hex(32))
    os.environ.update(env)
    started = time.monotonic()
    bench.database_copy(template)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    bench.log(f"migrated in {time.monotonic() - started:.1f} s")
    out = bench.OUT_DIR / "jobs"
    out.mkdir(parents=True, exist_ok=True)
    keys_file = bench.TEMPLATE_KEYS
    bench.redis_flush(env)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE points_purchase")  # the new covering index's visibility map, if migrated now
        cursor.execute("SELECT min(id), count(*) FROM members_member")
        first, members = cursor.fetchone()
        cursor.execute("CHECKPOINT")
    bench.codes_write(first + offset, CODES, out / "codes.txt")
    connection.close()
    server = bench.loadkit.AppServer(env, out / "gunicorn.log")
    server.start()
    r: dict = {"template": template, "rate": rate, "scale": {"members": members}}
    try:
        r["expiry"] = bench.expiry_under_load(
            server, env, keys_file, out / "codes.txt", rate, "J" + secrets.token_hex(3)
        )
    finally:
        server.stop()
        bench.redis_flush(env)
    r["expiry_rerun"] = bench.job("expire", env)
    as_of = str(time.time())
    r["tiers"] = bench.job("tiers", env, as_of)
    r["tiers_rerun"] = bench.job("tiers", env, as_of)  # as of the same instant
    r["ledger_after"] = bench.check_ledger_command(env)
    (out / "latest.json").write_text(json.dumps(r, indent=2, default=str))
    bench.table_print([f for f in bench.build_figures(r) if f["status"] != bench.NOT_MEASURED])
    print(f"Figures written to {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
