"""Load generators of `make bench` that wrk cannot be: run by scripts/bench.py
in their own process, never meant to be run by hand.

    bench_load.py race   URL KEYS_FILE CODES_FILE CLIENTS
    bench_load.py paced  URL KEYS_FILE CODES_FILE RATE SECONDS OUT_FILE RUN_ID

race:  for each coupon code (one round each), CLIENTS threads, each on its own
       keep-alive connection with another terminal key, wait at a barrier and
       then write off the same coupon at once. Prints "BENCH_RESULT {json}":
       rounds, rounds with exactly one success, status counts, 5xx count,
       error codes of the refusals, latency percentiles.
paced: purchases with earn (each member code once) at RATE per second on
       8 connections (exponential gaps) for SECONDS, or until stopped; writes
       one line per request to OUT_FILE as it goes: start time (epoch
       seconds), latency (ms), status. bench.py cuts that log into windows
       (before and during a job).
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def _lines(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


class Client:
    """One keep-alive HTTP connection; reconnects once when the server closed it."""

    def __init__(self, url: str, authorization: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": authorization, "Content-Type": "application/json", "Accept-Language": "en"}
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self.connection.request("POST", path, body=data, headers=self.headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def race(url: str, keys_file: str, codes_file: str, clients: int) -> dict:
    keys, codes = _lines(keys_file), _lines(codes_file)
    connections = [Client(url, keys[i % len(keys)]) for i in range(clients)]
    barrier = threading.Barrier(clients)
    results: list[list[tuple[int, str, float]]] = []
    lock = threading.Lock()

    def worker(index: int, code: str, round_results: list[tuple[int, str, float]]) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            status, body = connections[index].post(
                f"/api/v1/terminal/coupons/{code}/write-off", {"receipt_no": f"RACE-{index}"}
            )
            error = ""
            if status >= 400:
                try:
                    error = json.loads(body).get("error", {}).get("code", "") or "no_code"
                except ValueError:
                    error = "not_json"
        except Exception as exc:  # a socket error counts as a failed round, reported
            status, error = 0, type(exc).__name__
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            round_results.append((status, error, elapsed))

    for code in codes:
        round_results: list[tuple[int, str, float]] = []
        threads = [threading.Thread(target=worker, args=(i, code, round_results)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.append(round_results)

    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    exact = 0
    for round_results in results:
        successes = sum(1 for status, _, _ in round_results if status == 200)
        exact += successes == 1
        for status, error, elapsed in round_results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if error:
                errors[error] = errors.get(error, 0) + 1
            latencies.append(elapsed)
    return {
        "rounds": len(results),
        "clients": clients,
        "rounds_exactly_one_success": exact,
        "statuses": statuses,
        "errors": errors,
        "server_errors": sum(n for status, n in statuses.items() if status.startswith("5") or status == "0"),
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)},
    }


def paced(url: str, keys_file: str, codes_file: str, rate: float, seconds: float, out_file: str, run_id: str) -> dict:
    keys, codes = _lines(keys_file), _lines(codes_file)
    connections = 8
    deadline = time.time() + seconds
    lock = threading.Lock()
    log_file = Path(out_file).open("w")  # noqa: SIM115 - closed below; read while it grows
    count = 0
    next_code = iter(range(len(codes)))

    def worker(index: int) -> None:
        nonlocal count
        client = Client(url, keys[index % len(keys)])
        rng = random.Random(index)  # noqa: S311 - arrival gaps, not secrets
        sent = 0
        while True:
            time.sleep(min(rng.expovariate(rate / connections), 1.5))
            if time.time() >= deadline:
                return
            with lock:
                n = next(next_code, None)
            if n is None:
                return
            body = {"member": codes[n], "receipt_no": f"{run_id}-{index}-{sent}", "amount": f"{rng.randint(20, 500)}.00"}
            sent += 1
            started = time.time()
            try:
                status, _ = client.post("/api/v1/terminal/purchases", body)
            except Exception:  # counted as an error (status 0) in the log
                status = 0
            with lock:
                count += 1
                log_file.write(f"{started:.6f} {(time.time() - started) * 1000:.3f} {status}\n")
                log_file.flush()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log_file.close()
    return {"requests": count}


def main() -> int:
    mode = sys.argv[1]
    if mode == "race":
        url, keys_file, codes_file, clients = sys.argv[2:6]
        out = race(url, keys_file, codes_file, int(clients))
    elif mode == "paced":
        url, keys_file, codes_file, rate, seconds, out_file, run_id = sys.argv[2:9]
        out = paced(url, keys_file, codes_file, float(rate), float(seconds), out_file, run_id)
    else:
        sys.exit(f"unknown mode {mode!r}")
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
