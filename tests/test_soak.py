"""The soak in its CI form (issue 8, "Faults"): ``scripts/soak.py`` for 45 s.

Mixed till traffic (identify, preview, purchase with earn, purchase paying
with points, coupon write-off, refund) at half the capacity it measures, on a
private PostgreSQL server, through gunicorn as in production: no error of any
kind, gunicorn's workers' memory flat, ``check_ledger`` clean. The 10-minute
soak is the same script run by hand (``python scripts/soak.py``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from tests.scripts_import import script_module

lk = script_module("loadkit")
logger = logging.getLogger(__name__)

DURATION = 45
CAPACITY_SECONDS = 8


def test_mixed_till_traffic_at_half_capacity_has_no_errors_and_flat_worker_memory(tmp_path: Path):
    # given a private PostgreSQL server
    pg = lk.PostgresServer().start()
    try:
        # when the soak runs 45 s of mixed till traffic at half its measured capacity
        process = subprocess.run(  # noqa: S603 - this interpreter and the project's own script
            [
                sys.executable,
                str(lk.BASE_DIR / "scripts" / "soak.py"),
                f"--duration={DURATION}",
                f"--capacity-seconds={CAPACITY_SECONDS}",
                "--workers=2",
                "--members=150",
                # A member's code pays one purchase per step: with 150 members and
                # a 60 s step, the capacity run can use up every code of the step.
                "--code-step-seconds=10",
                "--sample-seconds=2",
                f"--database-url={pg.url('loyalty_soak')}",
                f"--out={tmp_path}",
            ],
            cwd=lk.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=DURATION + 300,
            check=False,
        )
    finally:
        pg.stop()
    line = next((x for x in process.stdout.splitlines() if x.startswith("SOAK_RESULT ")), None)
    assert line is not None, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(line.removeprefix("SOAK_RESULT "))
    soak, memory = result["soak"], result["memory"]
    logger.info("soak: %s", {k: v for k, v in result.items() if k not in ("soak", "memory")})
    logger.info("soak traffic: %s", soak)
    logger.info("soak memory: %s", memory)

    # then every operation of the mix ran, and nothing failed
    assert {op: row["requests"] > 0 for op, row in soak["by_operation"].items()} == dict.fromkeys(
        soak["by_operation"], True
    )
    assert soak["errors"] == 0, soak["error_kinds"]
    assert result["server_log_problems"] == 0
    assert result["check_ledger"].startswith("Ledger OK:")
    assert result["check_ledger"].endswith(" 0 violations.")
    # and the offered rate was held: half the capacity, at least 90% of it reached
    assert soak["rate"] >= 0.9 * result["target_rate"]
    assert abs(result["target_rate"] - result["capacity_rate"] / 2) <= 0.1
    # and the workers' memory stayed flat, with no worker restarted
    assert memory["worker_restarts"] == 0
    assert memory["growth_mib"] <= memory["max_growth_mib"]
    assert process.returncode == 0, result["problems"]
