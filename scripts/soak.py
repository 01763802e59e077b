"""Soak: mixed till traffic at half capacity for a long time, 0 errors, flat memory.

    python scripts/soak.py                    # 10 minutes (by hand)
    python scripts/soak.py --duration 45 --workers 2 --members 150   # the CI form (tests/test_soak.py)

What it does:

1. A database of its own, ``loyalty_soak`` (``SOAK_DB_NAME``), dropped and
   re-created on the server of ``DATABASE_URL`` or the embedded one (``make
   services`` starts it), or exactly ``--database-url``; migrated (or restored
   from the dump of an earlier migration, ``var/cache/``) and seeded through
   the services: one store, terminals with real keys, members with 1,000,000
   points each, bearer coupons.
   A private ``redis-server`` for the cache and the Celery broker.
2. gunicorn as in production (``gunicorn.conf.py``; ``--workers``, its 4 per core by
   default), no DEBUG.
3. Mixed till traffic from client threads in this process, each request with
   its own body: identify by member code (30%), purchase preview (15%),
   purchase earning by member number (25%), purchase paying with points by
   member code (10%), bearer coupon write-off (10%), refund of a purchase made
   earlier in the run (10%), every write with an ``Idempotency-Key``.
4. Capacity: the same mix, closed loop (8 clients, no pause) for
   ``--capacity-seconds``; this is also the warm-up. Or ``--rate``.
5. The soak: the mix offered at half that rate (``--rate`` if given) for
   ``--duration`` seconds, paced (each client sends at its own fixed
   interval). gunicorn's workers' resident memory (VmRSS) is sampled every
   ``--sample-seconds``.
6. ``check_ledger`` on the soak database.

It prints and writes (``var/soak/latest.json``, or ``--out``) the errors by
operation and status, p50/p99 latency, the rate reached, and worker memory: start, end,
growth and slope. It exits 1 when there was any error (a non-2xx reply, a
dropped connection, a worker restarted, a traceback in the server log, a
ledger violation) or when memory grew beyond the threshold: the sum of the
workers' RSS, median of the last three samples against the median of the
first three, may grow by at most ``--max-growth-mib`` (default 4 MiB per
worker; the 10-minute run at 14.6 req/s grew 9.1 MiB over 5 workers, the
45-second CI run well under 1 MiB). 2 when it could not run.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import secrets
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadkit  # noqa: E402 - scripts/ is not a package

BASE_DIR = loadkit.BASE_DIR
OUT_DIR = loadkit.VAR_DIR / "soak"
SOAK_DB = os.environ.get("SOAK_DB_NAME", "loyalty_soak")
RESULT_PREFIX = "SOAK_RESULT "
CAPACITY_CLIENTS = 8
OPENING_POINTS = 1_000_000
# Share of each operation in the mix (they add up to 100).
MIX = {
    "identify": 30,
    "preview": 15,
    "purchase_earn": 25,
    "purchase_points": 10,
    "coupon_write_off": 10,
    "refund": 10,
}

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[soak {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def server_params(url: str | None) -> tuple[dict[str, Any], str]:
    """libpq keywords of the server and the database name: ``--database-url``,
    else ``DATABASE_URL``'s server with the soak database, else the embedded one."""
    if not url:
        base = os.environ.get("DATABASE_URL", "")
        if not base:
            return {"host": str(loadkit.VAR_DIR / "run"), "user": "postgres"}, SOAK_DB
        url = urllib.parse.urlunsplit(urllib.parse.urlsplit(base)._replace(path=f"/{SOAK_DB}"))
    import environ

    config = environ.Env.db_url_config(url)
    params = {"host": config["HOST"] or "localhost", "port": config["PORT"] or 5432, "user": config["USER"]}
    if config["PASSWORD"]:
        params["password"] = config["PASSWORD"]
    return params, config["NAME"]


def codes_setup(secret: str, step_seconds: int) -> Any:
    """``members.codes.code_for`` with the server's secret, without a database."""
    sys.path.insert(0, str(BASE_DIR))
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            USE_TZ=True, LOYALTY_MEMBER_CODE_SECRET=secret, LOYALTY_MEMBER_CODE_STEP_SECONDS=step_seconds
        )
    from members import codes

    return codes


# -----------------------------------------------------------------------------
# The traffic
# -----------------------------------------------------------------------------
class Traffic:
    """The mix: picks an operation, builds its request, records its reply."""

    def __init__(
        self, port: int, data: dict[str, Any], codes: Any, seed: str, opening_points: int, mix: dict[str, int] = MIX
    ) -> None:
        self.port = port
        self.mix = mix
        self.keys = data["keys"]
        self.members = data["members"]
        self.coupons = collections.deque(data["coupons"])
        self.codes = codes
        self.run = seed
        self.lock = threading.Lock()
        self.purchases: collections.deque[tuple[str, int]] = collections.deque()  # (receipt, amount in cents)
        self.code_step_used: dict[str, int] = {}
        self.next_member = 0
        self.counter = 0
        self.records: list[tuple[str, float, int | None, str]] = []  # (op, seconds, status, error code)
        self.fallbacks: collections.Counter[str] = collections.Counter()
        # Points each member surely still has: the opening balance less every
        # points_to_use sent for them. Earned points are not counted (they may
        # wait, or a refund may take them back), refunds giving points back are
        # not either, so a request never asks for more than the balance holds
        # and ``insufficient_points`` stays an error of the system.
        self.points_left: dict[str, int] = {m["no"]: opening_points for m in self.members}

    def _points_to_use(self, member: dict[str, Any], wanted: int, *, spend: bool) -> int:
        """``wanted`` or what ``member`` surely has left, the smaller; ``spend``
        books it (a purchase), a preview only looks."""
        with self.lock:
            points = min(wanted, self.points_left[member["no"]])
            if spend:
                self.points_left[member["no"]] -= points
            return points

    def _n(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def _member(self) -> dict[str, Any]:
        with self.lock:
            self.next_member = (self.next_member + 1) % len(self.members)
            return self.members[self.next_member]

    def _code(self, member: dict[str, Any]) -> str:
        return self.codes.code_for(member_no=member["no"], secret=member["secret"])[0]

    def _code_for_purchase(self) -> dict[str, Any] | None:
        """A member whose current code has not paid a purchase yet (a code serves one)."""
        step = self.codes.step_at(datetime.now().astimezone())
        with self.lock:
            for _ in range(len(self.members)):
                self.next_member = (self.next_member + 1) % len(self.members)
                member = self.members[self.next_member]
                if self.code_step_used.get(member["no"], -1) < step:
                    self.code_step_used[member["no"]] = step
                    return member
        return None

    def request(self, client: loadkit.Http, rng: random.Random) -> None:
        op = rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        key = self.keys[rng.randrange(len(self.keys))]
        headers = {"Authorization": f"Api-Key {key}"}
        n = self._n()
        amount = rng.randint(1000, 60000)  # cents
        money = f"{amount // 100}.{amount % 100:02d}"
        path, body = "", {}
        if op == "coupon_write_off":
            with self.lock:
                coupon = self.coupons.popleft() if self.coupons else None
            if coupon is None:
                self.fallbacks["coupon_write_off"] += 1
                op = "identify"
            else:
                path, body = f"/api/v1/terminal/coupons/{coupon}/write-off", {"receipt_no": f"{self.run}-C{n}"}
        if op == "refund":
            with self.lock:
                bought = self.purchases.popleft() if self.purchases else None
            if bought is None:
                self.fallbacks["refund"] += 1
                op = "purchase_earn"
            else:
                receipt, paid = bought
                refund = paid if rng.random() < 0.5 else max(paid // 2, 1)
                path = f"/api/v1/terminal/purchases/{receipt}/refunds"
                body = {"refund_no": f"{self.run}-R{n}", "amount": f"{refund // 100}.{refund % 100:02d}"}
        if op == "purchase_points":
            member = self._code_for_purchase()
            points = self._points_to_use(member, rng.randint(1, amount // 2), spend=True) if member else 0
            if member is None or points == 0:
                self.fallbacks["purchase_points"] += 1
                op = "purchase_earn"
            else:
                path = "/api/v1/terminal/purchases"
                body = {
                    "member": self._code(member),
                    "receipt_no": f"{self.run}-P{n}",
                    "amount": money,
                    "points_to_use": points,
                }
        if op == "purchase_earn":
            path = "/api/v1/terminal/purchases"
            body = {"member": self._member()["no"], "receipt_no": f"{self.run}-P{n}", "amount": money}
        if op == "identify":
            path, body = "/api/v1/terminal/identify", {"code": self._code(self._member())}
        if op == "preview":
            path = "/api/v1/terminal/purchases/preview"
            member = self._member()
            body = {
                "member": self._code(member),
                "receipt_no": f"{self.run}-V{n}",
                "amount": money,
                "points_to_use": self._points_to_use(member, rng.randint(0, amount // 2), spend=False),
            }
        if op not in ("identify", "preview"):
            headers["Idempotency-Key"] = f"{self.run}-{n}-{uuid.uuid4().hex[:8]}"
        reply = client.post(path, body, headers)
        ok = reply.status is not None and 200 <= reply.status < 300
        if ok and op.startswith("purchase"):
            with self.lock:
                self.purchases.append((body["receipt_no"], amount))
        with self.lock:
            self.records.append((op, reply.seconds, reply.status, "" if ok else (reply.error_code or reply.error)))


def closed_loop(traffic: Traffic, seconds: float, clients: int) -> float:
    """Requests per second with ``clients`` sending back to back."""
    stop = time.monotonic() + seconds
    start_count = len(traffic.records)

    def worker(i: int) -> None:
        client, rng = loadkit.Http(traffic.port), random.Random(f"cap-{i}")  # noqa: S311 - load shapes
        while time.monotonic() < stop:
            traffic.request(client, rng)
        client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (len(traffic.records) - start_count) / (time.monotonic() - started)


def paced(traffic: Traffic, seconds: float, rate: float, on_tick: Any) -> float:
    """About ``rate`` requests per second for ``seconds``: each client sends at
    its own fixed interval (clients x interval = 1 / rate), starting staggered."""
    clients = max(2, min(32, math.ceil(rate * 0.2)))  # ~200 ms per client between sends
    interval = clients / rate
    started = time.monotonic()
    stop = started + seconds
    start_count = len(traffic.records)

    def worker(i: int) -> None:
        client, rng = loadkit.Http(traffic.port), random.Random(f"soak-{i}")  # noqa: S311 - load shapes
        due = started + interval * i / clients
        while True:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if time.monotonic() >= stop:
                break
            traffic.request(client, rng)
            due += interval
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        on_tick()
        for thread in threads:
            thread.join(timeout=0.2)
    return (len(traffic.records) - start_count) / (time.monotonic() - started)


# -----------------------------------------------------------------------------
# Memory
# -----------------------------------------------------------------------------
class MemorySampler:
    def __init__(self, server: loadkit.AppServer, every: float) -> None:
        self.server = server
        self.every = every
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.next_at = 0.0
        self.pids: set[int] = set(server.worker_pids())

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every
        self.samples.append((now, self.server.workers_rss_kib()))

    def summary(self, max_growth_mib: float) -> dict[str, Any]:
        totals = [(t, sum(sizes.values()) / 1024) for t, sizes in self.samples]
        start = statistics.median(v for _t, v in totals[:3])
        end = statistics.median(v for _t, v in totals[-3:])
        slope = 0.0
        if len(totals) >= 2:
            t0 = totals[0][0]
            xs = [(t - t0) / 60 for t, _v in totals]
            ys = [v for _t, v in totals]
            mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
            var = sum((x - mean_x) ** 2 for x in xs)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        pids_seen = set().union(*(sizes.keys() for _t, sizes in self.samples)) if self.samples else set()
        per_worker = {
            pid: [round(sizes[pid] / 1024, 1) for _t, sizes in self.samples if pid in sizes] for pid in pids_seen
        }
        return {
            "samples": len(self.samples),
            "workers": len(self.pids),
            "worker_restarts": len(pids_seen - self.pids),
            "rss_start_mib": round(start, 1),
            "rss_end_mib": round(end, 1),
            "growth_mib": round(end - start, 1),
            "slope_mib_per_min": round(slope, 2),
            "max_growth_mib": max_growth_mib,
            "per_worker_start_end_mib": {str(pid): [v[0], v[-1]] for pid, v in per_worker.items() if v},
            "series_mib": [[round(t - totals[0][0], 1), round(v, 1)] for t, v in totals],
        }


# -----------------------------------------------------------------------------
# Report
# -----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def traffic_summary(records: list[tuple[str, float, int | None, str]], seconds: float) -> dict[str, Any]:
    by_op: dict[str, Any] = {}
    for op in MIX:
        mine = [r for r in records if r[0] == op]
        latencies = [r[1] * 1000 for r in mine]
        by_op[op] = {
            "requests": len(mine),
            "errors": sum(1 for r in mine if r[3]),
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
        }
    errors = collections.Counter(f"{r[0]} {r[2] or 'no reply'} {r[3]}" for r in records if r[3])
    latencies = [r[1] * 1000 for r in records]
    return {
        "requests": len(records),
        "rate": round(len(records) / seconds, 1) if seconds else 0.0,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(20)),
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
        "by_operation": by_op,
    }


def report_print(result: dict[str, Any]) -> None:
    soak, memory = result["soak"], result["memory"]
    print()
    print(
        f"capacity (closed loop, {CAPACITY_CLIENTS} clients): {result['capacity_rate']} req/s; "
        f"offered {result['target_rate']} req/s for {result['duration']} s, reached {soak['rate']} req/s"
    )
    print(f"{'operation':<18}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for op, row in soak["by_operation"].items():
        print(f"{op:<18}{row['requests']:>10}{row['errors']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}")
    print(f"{'all':<18}{soak['requests']:>10}{soak['errors']:>8}{soak['p50_ms']:>9}{soak['p99_ms']:>9}")
    if soak["error_kinds"]:
        print("errors: " + "; ".join(f"{k} x{v}" for k, v in soak["error_kinds"].items()))
    print(
        f"worker RSS ({memory['workers']} workers, {memory['samples']} samples): {memory['rss_start_mib']} MiB -> "
        f"{memory['rss_end_mib']} MiB, growth {memory['growth_mib']} MiB (limit {memory['max_growth_mib']}), "
        f"slope {memory['slope_mib_per_min']} MiB/min, worker restarts {memory['worker_restarts']}"
    )
    print(f"server log: {result['server_log_problems']} tracebacks / 500s; check_ledger: {result['check_ledger']}")
    print(f"fallbacks (nothing left to refund / no coupon / no fresh code or points): {result['fallbacks']}")
    print("RESULT: " + ("PASS" if result["ok"] else "FAIL: " + "; ".join(result["problems"])))


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now().astimezone()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params, dbname = server_params(args.database_url)
    redis = loadkit.RedisServer()
    server: loadkit.AppServer | None = None
    code_secret = secrets.token_hex(32)
    step_seconds = args.code_step_seconds
    try:
        redis.start()
        env = loadkit.app_env(
            loadkit.database_url(params, dbname),
            redis,
            LOYALTY_MEMBER_CODE_SECRET=code_secret,
            LOYALTY_MEMBER_CODE_STEP_SECONDS=str(step_seconds),
        )
        how = loadkit.database_create_migrated(params, dbname, env)
        log(f"database {dbname} {how}")
        # Coupons enough for the soak at up to 150 req/s, and the capacity run.
        coupons = math.ceil((args.duration + args.capacity_seconds) * 150 * MIX["coupon_write_off"] / 100)
        data = loadkit.seed(env, members=args.members, terminals=8, coupons=coupons, opening_points=OPENING_POINTS)
        log(f"seeded {len(data['members'])} members, {len(data['coupons'])} coupons in {data['seconds']} s")
        server = loadkit.AppServer(env, out_dir / "gunicorn.log", workers=args.workers).start()
        log(f"gunicorn {loadkit.gunicorn_described(server.workers)} on port {server.port}")
        traffic = Traffic(
            server.port, data, codes_setup(code_secret, step_seconds), f"S{secrets.token_hex(3)}", OPENING_POINTS
        )

        capacity = closed_loop(traffic, args.capacity_seconds, CAPACITY_CLIENTS)
        warmup_errors = sum(1 for r in traffic.records if r[3])
        rate = args.rate or capacity / 2
        log(f"capacity {capacity:.1f} req/s ({warmup_errors} errors); soak at {rate:.1f} req/s for {args.duration} s")
        traffic.records.clear()
        sampler = MemorySampler(server, args.sample_seconds)
        sampler.tick()
        soak_started = time.monotonic()
        paced(traffic, args.duration, rate, sampler.tick)
        soak_seconds = time.monotonic() - soak_started
        sampler.next_at = 0.0
        sampler.tick()
        records = list(traffic.records)
        server.stop()
        server_log = (out_dir / "gunicorn.log").read_text(errors="replace")
        ledger = loadkit.manage(env, "check_ledger")
    except Exception as exc:  # report why it could not run, exit 2
        log(f"could not run: {exc!r}")
        return 2
    finally:
        if server is not None:
            server.stop()
        redis.stop()

    soak = traffic_summary(records, soak_seconds)
    memory = sampler.summary(args.max_growth_mib * server.workers)
    log_problems = server_log.count("Traceback") + server_log.count("Internal Server Error")
    problems = []
    if soak["errors"] or warmup_errors:
        problems.append(f"{soak['errors']} errors in the soak, {warmup_errors} in the capacity run")
    if memory["worker_restarts"]:
        problems.append(f"{memory['worker_restarts']} gunicorn workers restarted")
    if memory["growth_mib"] > memory["max_growth_mib"]:
        problems.append(f"worker memory grew {memory['growth_mib']} MiB (limit {memory['max_growth_mib']} MiB)")
    if log_problems:
        problems.append(f"{log_problems} tracebacks / 500s in the server log")
    if ledger.returncode != 0:
        problems.append("check_ledger: " + (ledger.stdout + ledger.stderr).strip().splitlines()[-1][:200])
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "database": dbname,
        "workers": server.workers,
        "members": len(data["members"]),
        "duration": args.duration,
        "capacity_seconds": args.capacity_seconds,
        "capacity_rate": round(capacity, 1),
        "target_rate": round(rate, 1),
        "soak": soak,
        "memory": memory,
        "server_log_problems": log_problems,
        "check_ledger": (ledger.stdout.strip().splitlines() or ["(no output)"])[-1][:200],
        "fallbacks": dict(traffic.fallbacks),
        "problems": problems,
        "ok": not problems,
    }
    report_print(result)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    print(RESULT_PREFIX + json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if result["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=600, help="seconds of soak at half capacity (default 600)")
    parser.add_argument("--rate", type=float, default=0.0, help="req/s to offer instead of half the measured capacity")
    parser.add_argument("--capacity-seconds", type=int, default=20, help="closed-loop capacity run, also the warm-up")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: gunicorn.conf.py's)")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument(
        "--code-step-seconds",
        type=int,
        default=60,
        help="member code step (production 60); a code pays one purchase per step, so a short run with few "
        "members needs a shorter step to keep paying with points",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="worker RSS sampling period")
    parser.add_argument(
        "--max-growth-mib", type=float, default=4.0, help="allowed growth of worker RSS, MiB per worker (default 4)"
    )
    parser.add_argument("--database-url", default="", help="exactly this database (dropped and re-created)")
    parser.add_argument("--out", default=str(OUT_DIR), help="where the JSON results and the server log go")
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        return run(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
