"""The till's figures of ``make bench`` again (floor, identify, purchase, at full
and half load, with CPU per request by process) on the data an earlier
``make bench`` left in ``loyalty_bench``, with this checkout's code: a few
minutes instead of a full run's hour and a quarter (docs/performance.md,
session 4).

    python scripts/bench_api.py MEMBER_OFFSET

MEMBER_OFFSET: where the members whose codes the purchases use start, counted
from the first member; each code serves one purchase, so take members no
earlier run of this script used (the bench itself uses the first 200,000 at
SCALE=full). Identify uses the first 20,000 members' codes. It migrates the
database, clears the bench's failure counters and terminal blocks, and prints
the table; ``LOYALTY_VAR_DIR`` points it at another checkout's embedded servers.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

CODES = 120_000
IDENTIFY_CODES = 20_000


def main() -> int:
    offset = int(sys.argv[1])
    env = bench.bench_env("bench-" + secrets.token_hex(32))
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    out = bench.OUT_DIR / "api"
    out.mkdir(parents=True, exist_ok=True)
    keys_file = bench.OUT_DIR / "work" / "keys.txt"
    bench.redis_flush(env)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE members_terminal SET identify_blocked_until = NULL, coupon_blocked_until = NULL")
        cursor.execute("SELECT min(id) FROM members_member")
        first = cursor.fetchone()[0]
    # Codes are keyed by the server secret: made afresh with this run's.
    bench.codes_write(first, IDENTIFY_CODES, out / "identify.txt")
    bench.codes_write(first + offset, CODES, out / "codes.txt")
    codes = (out / "codes.txt").read_text().split()
    # Half the codes for the full-load rounds (a share each), half for the half-load run.
    half = len(codes) // 2  # fewer than CODES at SCALE=small
    purchase_files = bench.round_code_files(codes[:half], out / "purchase_max")
    (out / "purchase_half.txt").write_text("\n".join(codes[half:]) + "\n")
    connection.close()
    scale = bench.SCALES[os.environ.get("SCALE", "full")]
    duration, conns = scale["duration"], scale["connections"]
    server = bench.loadkit.AppServer(env, out / "gunicorn.log")
    server.start()
    r: dict = {}
    run_id = "A" + secrets.token_hex(3)

    def step(_name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    try:
        bench.wrk(server, "floor", keys_file, duration=3, connections=conns)
        r.update(
            bench.api_rounds(
                server, keys_file, out / "identify.txt", purchase_files, run_id,
                duration=duration, connections=conns, step=step,
            )
        )
        r["identify_half"] = bench.wrk_paced(
            server, "identify", keys_file, bench.median_rate(r, "identify") / 2,
            data_file=out / "identify.txt", duration=duration,
        )
        r["purchase_half"] = bench.wrk_paced(
            server, "purchase", keys_file, bench.median_rate(r, "purchase") / 2, data_file=out / "purchase_half.txt",
            run_id=f"{run_id}b", duration=duration,
        )
    finally:
        server.stop()
        bench.redis_flush(env)
    bench.table_print([f for f in bench.build_figures(r) if f["status"] != bench.NOT_MEASURED])
    (out / "latest.json").write_text(json.dumps(r, indent=2, default=str))
    print(f"Figures written to {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
