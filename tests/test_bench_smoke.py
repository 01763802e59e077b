"""Smoke tests of ``make bench``'s own parts that run in seconds: the floor
endpoint it measures (and that it is not an anonymous endpoint), and the
report it prints. The benchmark itself (minutes) runs with ``make bench``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", BENCH)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.django_db
def test_floor_reads_the_terminals_store_in_two_queries(terminal_client, terminal, django_assert_num_queries):
    # given a terminal with its API key
    # when it calls the floor
    with django_assert_num_queries(2):  # the key, then the store by primary key
        response = terminal_client.get("/api/v1/bench/floor")
    # then it gets its own store
    assert response.status_code == 200
    assert response.json() == {"store": {"id": terminal.store_id, "code": terminal.store.code}}


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Api-Key nope.nope", "Bearer nope.nope"])
def test_floor_needs_a_terminal_api_key(anon_client, authorization):
    # given no key, a wrong key or a member token scheme
    if authorization:
        anon_client.credentials(HTTP_AUTHORIZATION=authorization)
    # when calling the floor
    response = anon_client.get("/api/v1/bench/floor")
    # then it is refused in the error envelope
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_report_lists_every_target_and_marks_what_was_not_measured(capsys):
    # given a run where only the baselines and identify were measured
    bench = _bench()
    run = {
        "scale": {"members": 20_000},
        "pgbench": {"tps": 3000.0},
        "floor": {"rps": 400.0, "p99_ms": 50.0},
        "identify": {"rps": 300.0, "errors": 0},
        "identify_half": {"rps": 150.0, "p99_ms": 12.0, "errors": 0},
        "queries": {"identify": {"queries": 3}},
    }
    # when building and printing the table
    figures = bench.build_figures(run)
    bench.table_print(figures)
    # then identify is judged against its ratio to the floor, the rest is "not measured"
    by_name = {f["figure"]: f for f in figures}
    assert by_name["identify throughput"]["value"] == 0.75
    assert by_name["identify throughput"]["status"] == "pass"
    assert by_name["identify p99 at half load"]["status"] == "pass"
    assert by_name["purchase with earn throughput"]["status"] == "not measured"
    assert by_name["check_ledger after load"]["status"] == "not measured"
    assert "coupon write-off race" in capsys.readouterr().out


def test_each_path_is_judged_against_the_floors_measured_on_either_side_of_it():
    # given a machine whose floor drifted from 400 to 600 req/s over the run
    bench = _bench()
    run = {
        "floor": {"rps": 400.0, "p99_ms": 50.0},
        "identify": {"rps": 350.0, "errors": 0},
        "floor_between": {"rps": 500.0, "p99_ms": 40.0},
        "purchase": {"rps": 210.0, "errors": 0},
        "floor_after": {"rps": 600.0, "p99_ms": 30.0},
    }
    by_name = {f["figure"]: f for f in bench.build_figures(run)}
    # then identify is compared with the mean of the floors before and after it (450),
    # the purchase with those around it (550)
    assert by_name["identify throughput"]["value"] == round(350 / 450, 2)
    assert by_name["identify throughput"]["status"] == "pass"
    assert by_name["purchase with earn throughput"]["value"] == round(210 / 550, 2)
    assert by_name["purchase with earn throughput"]["status"] == "FAIL"
    assert "400 / 500 / 600" in by_name["floor: GET one row by pk"]["detail"]
    # and a run without the later floors falls back to the first
    del run["floor_between"], run["floor_after"]
    by_name = {f["figure"]: f for f in bench.build_figures(run)}
    assert by_name["purchase with earn throughput"]["value"] == round(210 / 400, 2)


def test_each_path_is_judged_by_its_median_round_and_the_errors_of_every_round():
    # given three rounds whose identify ratios are 0.50, 0.90 and 0.75 × and purchase ratios 0.30, 0.45, 0.42 ×
    bench = _bench()

    def round_of(floor: float, identify: float, purchase: float, errors: int = 0) -> dict:
        return {
            "floor": {"rps": floor, "p99_ms": 50.0, "cpu_ms": {"app": 1.0, "postgres": 0.1, "redis": 0.0, "wrk": 0.1, "total": floor / 1000}},
            "identify": {"rps": identify * floor, "errors": 0},
            "floor_between": {"rps": floor, "p99_ms": 50.0},
            "purchase": {"rps": purchase * floor, "errors": errors},
            "floor_after": {"rps": floor, "p99_ms": 50.0},
        }

    rounds = [round_of(1000, 0.50, 0.30), round_of(1100, 0.90, 0.45), round_of(1200, 0.75, 0.42)]
    run = {**rounds[0], "rounds": rounds}
    # when
    by_name = {f["figure"]: f for f in bench.build_figures(run)}
    # then each path's figure is its middle round's, with every round's ratio said
    assert by_name["identify throughput"]["value"] == 0.75
    assert by_name["identify throughput"]["status"] == "pass"
    assert by_name["identify throughput"]["detail"].startswith("median of 3 rounds (0.50 / 0.75 / 0.90 ×); 900 req/s")
    assert by_name["purchase with earn throughput"]["value"] == 0.42
    assert by_name["purchase with earn throughput"]["status"] == "pass"
    # and the CPU figures are the median round's floor
    assert by_name["CPU per request: floor"]["value"] == 1.2
    assert "in 3 rounds: 1,000 / 1,000 / 1,000 / 1,100" in by_name["floor: GET one row by pk"]["detail"]
    # and the half-load runs take the median round's rate
    assert bench.median_rate(run, "purchase") == 0.42 * 1200

    # when a round that is not the median had an error
    rounds[0]["purchase"]["errors"] = 1
    by_name = {f["figure"]: f for f in bench.build_figures(run)}
    # then the path fails: every round counts its errors
    assert by_name["purchase with earn throughput"]["status"] == "FAIL"
    assert "1 errors" in by_name["purchase with earn throughput"]["detail"]


def test_each_round_gets_its_own_equal_share_of_the_purchase_codes(tmp_path):
    # given ten codes
    bench = _bench()
    codes = [f"c{n}" for n in range(10)]
    # when they are split for the rounds
    files = bench.round_code_files(codes, tmp_path / "codes_purchase_max")
    # then each round has its own file, equal shares, no code twice
    shares = [f.read_text().split() for f in files]
    assert [f.name for f in files] == [f"codes_purchase_max_{n}.txt" for n in range(1, bench.API_ROUNDS + 1)]
    assert {len(share) for share in shares} == {10 // bench.API_ROUNDS}
    assert len({code for share in shares for code in share}) == bench.API_ROUNDS * (10 // bench.API_ROUNDS)


def test_cpu_figures_give_each_process_and_the_purchase_budget_of_the_ratio_target():
    # given CPU per request by process at full load, as wrk() records it
    bench = _bench()
    floor = {"cpu_ms": {"app": 2.0, "postgres": 0.4, "redis": 0.0, "wrk": 0.1, "total": 2.5}}
    purchase = {"cpu_ms": {"app": 7.5, "postgres": 3.0, "redis": 0.05, "wrk": 0.2, "total": 10.75}}
    # when
    figures = {f["figure"]: f for f in bench.cpu_figures(floor, None, purchase)}
    # then each request's figure is its total, split by process, and a missing run is not measured
    assert figures["CPU per request: floor"]["value"] == 2.5
    assert figures["CPU per request: floor"]["detail"] == "app 2.00, PostgreSQL 0.40, Redis 0.00, wrk 0.10"
    assert figures["CPU per request: identify"]["status"] == bench.NOT_MEASURED
    # and the app CPU 0.40 × floor allows a purchase: 2.5 × 2.5 ms less its own 3.25 ms outside the app
    budget = figures["purchase: app CPU that 0.40 × floor allows"]
    assert budget["value"] == 3.0
    assert "measured 7.50 ms" in budget["detail"]


def test_cpu_figures_without_a_local_database_server_give_no_total_and_no_budget():
    # given a PostgreSQL server on another machine: its CPU is not in /proc here
    bench = _bench()
    bench._POSTMASTER[:] = [None]
    before = {"app": 1.0, "postgres": 0.0, "redis": 0.0}
    after = {"app": 3.0, "postgres": 0.0, "redis": 0.0}
    # when
    per = bench.cpu_per_request(before, after, wrk_seconds=0.1, requests=1000)
    figures = {f["figure"]: f for f in bench.cpu_figures({"cpu_ms": per}, None, {"cpu_ms": per})}
    # then the app's share is there, PostgreSQL is said not measured, and nothing adds up to a false total
    assert per == {"app": 2.0, "redis": 0.0, "wrk": 0.1}
    assert figures["CPU per request: floor"]["status"] == bench.NOT_MEASURED
    assert "PostgreSQL on another machine, not measured" in figures["CPU per request: floor"]["detail"]
    assert "purchase: app CPU that 0.40 × floor allows" not in figures


TINY = {"members": 300, "purchases": 1_500, "stores": 4, "terminals_per_store": 1, "history_months": 18}


@pytest.mark.django_db(transaction=True)
def test_generated_data_reads_as_the_services_would_have_written_it():
    # given the bench's data made in SQL at a tiny scale
    from django.db.models import Count
    from rest_framework.test import APIClient

    from campaigns.models import Benefit, Coupon, CouponEvent
    from members.models import Member, TerminalAPIKey
    from members.selectors import member_code_current

    bench = _bench()
    data = bench.data_generate(TINY)
    # then its rows point to rows that exist and its copies of the rules agree with the code
    assert bench.foreign_keys_check() == {}
    assert bench.data_self_check(data["first_member"]) == []
    # and members hold coupons of the three bench benefits, each with its events
    coupons = Coupon.objects.filter(code__startswith="BENCH")
    assert 0 < coupons.values("member").distinct().count() < TINY["members"]
    assert set(coupons.values_list("status", flat=True)) == {"issued", "written_off", "expired"}
    for benefit in Benefit.objects.filter(coupons__code__startswith="BENCH").distinct():
        assert benefit.issued_count == benefit.coupons.count()
    kinds = {
        (row["coupon__status"], row["kind"]): row["n"]
        for row in CouponEvent.objects.values("coupon__status", "kind").annotate(n=Count("id"))
    }
    counts = {row["status"]: row["n"] for row in coupons.values("status").annotate(n=Count("id"))}
    assert kinds == {
        ("issued", "issued"): counts["issued"],
        ("written_off", "issued"): counts["written_off"],
        ("written_off", "written_off"): counts["written_off"],
        ("expired", "issued"): counts["expired"],
        ("expired", "expired"): counts["expired"],
    }
    # and a till of a store where one benefit is not usable, identifying a
    # member holding issued coupons of it and of another, sees only the other's
    issued = coupons.filter(status="issued")
    limited = issued.filter(benefit__stores__isnull=False).values("member_id")
    holder = (
        Member.objects.filter(pk__in=limited)
        .filter(pk__in=issued.filter(benefit__stores__isnull=True).values("member_id"))
        .order_by("pk")
        .first()
    )
    key = data["keys"][-1]  # the last store: outside the limited benefit's first half
    store = TerminalAPIKey.objects.get_from_key(key).terminal.store
    assert not Benefit.objects.filter(stores=store, coupons__member=holder).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    response = client.post("/api/v1/terminal/identify", {"code": member_code_current(member=holder)[0]}, format="json")
    assert response.status_code == 200, response.content
    usable = list(
        issued.filter(member=holder, benefit__stores__isnull=True)
        .order_by("valid_until", "id")
        .values_list("code", flat=True)
    )
    assert usable
    assert [c["code"] for c in response.json()["coupons"]] == usable
