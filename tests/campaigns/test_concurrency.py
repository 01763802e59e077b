"""Coupons under real concurrency: real threads, one database connection each,
started together by a barrier, against real PostgreSQL.

Each test is transactional (``django_db(transaction=True)``): the threads'
commits are real and the test database is flushed afterwards, which also
empties the default tiers made by a data migration; they are created at the
start of each test and put back once the module is done.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from campaigns.errors import CouponAlreadyWrittenOff
from campaigns.models import Benefit, Coupon, CouponEvent, CouponIssueRequest
from campaigns.services.coupons import benefit_exchange, coupon_issue, coupon_write_off
from campaigns.services.issuing import coupon_issue_process
from members.models import Member, Store
from members.selectors import IdentifiedMember
from members.services import member_enrol, store_get_or_create, terminal_create
from points.batch import ledger_check
from points.locks import account_lock
from points.models import PointsAccount, PointsEntry, Purchase
from points.services import Refs, points_credit, purchase_record
from tests.campaigns.factories import BenefitFactory, coupon_give, issued_count

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 32
Kind = PointsEntry.Kind
Source = PointsEntry.Source


def _create_default_tiers() -> None:
    from django.apps import apps

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


@pytest.fixture(scope="module", autouse=True)
def _default_tiers_restored(django_db_blocker: Any) -> Iterator[None]:
    """After the module's last flush, give later tests their default tiers back."""
    yield
    with django_db_blocker.unblock():
        _create_default_tiers()


@pytest.fixture(autouse=True)
def _default_tiers(transactional_db: Any) -> None:
    _create_default_tiers()  # an earlier transactional test may have flushed them


@pytest.fixture
def shop() -> Store:
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    return store


def _enrol(store: Store, index: int = 0, points: int = 0) -> Member:
    member, _ = member_enrol(phone=f"1381234{index:04d}", name="王小明", store=store)
    if points:
        points_credit(member=member, points=points, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN))
    return member


def _run_pooled(calls: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run ``calls`` on ``workers`` threads, all released at once by a barrier,
    each thread closing its connection at the end; returns each call's result
    or the exception it raised, in order."""
    barrier = threading.Barrier(workers)
    todo: queue.SimpleQueue[tuple[int, Callable[[], Any]]] = queue.SimpleQueue()
    for item in enumerate(calls):
        todo.put(item)
    outcomes: list[Any] = [None] * len(calls)

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                try:
                    index, call = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcomes[index] = call()
                except BaseException as exc:
                    outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [thread for thread in threads if thread.is_alive()] == []
    return outcomes


def _run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    return _run_pooled(calls, workers=len(calls))


def _kinds(outcomes: list[Any]) -> Counter[str]:
    return Counter(type(outcome).__name__ for outcome in outcomes)


def _ledger_ok() -> None:
    report = ledger_check()
    assert report.ok, report.violations


# -----------------------------------------------------------------------------
# Write-off happens once
# -----------------------------------------------------------------------------
def test_concurrent_write_offs_of_one_coupon_succeed_exactly_once(shop):
    # given an issued coupon and 32 tills
    member = _enrol(shop)
    coupon = coupon_give(BenefitFactory(), member)
    tills = [terminal_create(store=shop, name=f"till-{index}")[0] for index in range(THREADS)]

    def write_off(index: int) -> Callable[[], Any]:
        def call() -> Any:
            return coupon_write_off(code=coupon.code, store=shop, terminal=tills[index], receipt_no=f"R-{index}")

        return call

    # when every till scans it at once
    outcomes = _run_together([write_off(index) for index in range(THREADS)])
    # then one write-off, and 31 refusals naming that one
    assert _kinds(outcomes) == {"Coupon": 1, "CouponAlreadyWrittenOff": THREADS - 1}
    (winner,) = [outcome for outcome in outcomes if isinstance(outcome, Coupon)]
    stored = Coupon.objects.get(pk=coupon.pk)
    assert (stored.status, stored.written_off_receipt, stored.written_off_terminal_id) == (
        "written_off",
        winner.written_off_receipt,
        winner.written_off_terminal_id,
    )
    refusals = [outcome for outcome in outcomes if isinstance(outcome, CouponAlreadyWrittenOff)]
    assert {tuple(sorted(refusal.detail.items())) for refusal in refusals} == {
        (
            ("receipt_no", stored.written_off_receipt),
            ("store", "SH001"),
            ("terminal", stored.written_off_terminal_id),
            ("written_off_at", stored.written_off_at.isoformat()),
        )
    }
    assert list(CouponEvent.objects.filter(coupon=coupon).order_by("pk").values_list("kind", "receipt_no")) == [
        ("issued", ""),
        ("written_off", stored.written_off_receipt),
    ]


# -----------------------------------------------------------------------------
# Stock is never oversold, points are debited once per coupon
# -----------------------------------------------------------------------------
def test_concurrent_exchanges_never_oversell_and_debit_exactly_the_coupons_issued(shop):
    # given 200 members with 500 points each, and 50 coupons of 300 points
    members = [_enrol(shop, index, points=500) for index in range(200)]
    benefit = BenefitFactory(points_price=300, total_stock=50)

    def exchange(member: Member) -> Callable[[], Any]:
        def call() -> Any:
            fresh = Member.objects.select_related("tier").get(pk=member.pk)
            return benefit_exchange(benefit=Benefit.objects.get(pk=benefit.pk), member=fresh)

        return call

    # when all 200 exchange at once on a pool of 32 connections
    outcomes = _run_pooled([exchange(member) for member in members], workers=THREADS)
    # then exactly 50 coupons, and only their owners paid, exactly once
    assert _kinds(outcomes) == {"Coupon": 50, "OutOfStock": 150}
    assert Coupon.objects.count() == 50
    assert issued_count(benefit) == 50
    winners = {outcome.member_id for outcome in outcomes if isinstance(outcome, Coupon)}
    assert len(winners) == 50
    assert set(Coupon.objects.values_list("member_id", flat=True)) == winners
    redeemed = PointsEntry.objects.filter(kind=Kind.REDEEM)
    assert redeemed.aggregate(total=Sum("points")) == {"total": -50 * 300}
    assert set(redeemed.values_list("member_id", "points", "source")) == {(pk, -300, "benefit") for pk in winners}
    assert Coupon.objects.filter(exchange_entry__isnull=True).count() == 0
    balances = dict(PointsAccount.objects.values_list("member_id", "balance"))
    assert balances == {member.pk: 200 if member.pk in winners else 500 for member in members}
    assert CouponEvent.objects.filter(kind="issued").count() == 50
    _ledger_ok()


def test_concurrent_exchanges_by_one_member_respect_the_per_member_limit(shop):
    # given a member with 10,000 points and a benefit limited to one per member
    member = _enrol(shop, points=10_000)
    benefit = BenefitFactory(points_price=300, total_stock=100, per_member_limit=1)

    def exchange() -> Any:
        fresh = Member.objects.select_related("tier").get(pk=member.pk)
        return benefit_exchange(benefit=Benefit.objects.get(pk=benefit.pk), member=fresh)

    # when the member taps "exchange" on 16 devices at once
    outcomes = _run_together([exchange] * 16)
    # then one coupon, paid once
    assert _kinds(outcomes) == {"Coupon": 1, "MemberLimitReached": 15}
    assert Coupon.objects.filter(member=member).count() == 1
    assert issued_count(benefit) == 1
    assert PointsAccount.objects.get(member=member).balance == 10_000 - 300
    assert list(PointsEntry.objects.filter(member=member).order_by("pk").values_list("kind", "points")) == [
        ("bonus", 10_000),
        ("redeem", -300),
    ]
    _ledger_ok()


# -----------------------------------------------------------------------------
# Locks held by others do not stall or skip coupon work
# -----------------------------------------------------------------------------
def _while_held(hold: Callable[[], Any], call: Callable[[], Any], *, wait: float = 1.0) -> tuple[Any, bool]:
    """Run ``hold`` in a transaction on one thread and keep it open while
    ``call`` runs on another; returns ``call``'s outcome and whether it had
    finished before the holder let go (within ``wait`` seconds)."""
    holding, release = threading.Event(), threading.Event()
    outcome: list[Any] = [None]

    def holder() -> None:
        try:
            with transaction.atomic():
                hold()
                holding.set()
                release.wait(timeout=30)
        finally:
            holding.set()
            connection.close()

    def caller() -> None:
        try:
            outcome[0] = call()
        except BaseException as exc:
            outcome[0] = exc
        finally:
            connection.close()

    holder_thread = threading.Thread(target=holder)
    holder_thread.start()
    assert holding.wait(timeout=30)
    caller_thread = threading.Thread(target=caller)
    caller_thread.start()
    caller_thread.join(timeout=wait)
    finished_first = not caller_thread.is_alive()
    release.set()
    caller_thread.join(timeout=30)
    holder_thread.join(timeout=30)
    assert not caller_thread.is_alive()
    assert not holder_thread.is_alive()
    return outcome[0], finished_first


def test_a_queued_issue_waits_for_another_issue_of_the_same_benefit_instead_of_being_skipped(shop):
    # given a monthly gift, a request queued for one member, and another
    # worker in the middle of issuing the same gift to someone else
    first, second = _enrol(shop, 0), _enrol(shop, 1)
    benefit = BenefitFactory(points_price=0, total_stock=100)
    # (queued while the broker was down: enqueueing here would issue it at once, tasks being eager)
    request = CouponIssueRequest.objects.create(
        benefit=benefit, member=second, source="campaign", reference="campaign:1", next_attempt_at=timezone.now()
    )

    def issue_to_first() -> Any:
        return coupon_issue(benefit=Benefit.objects.get(pk=benefit.pk), member=first, source="campaign")

    # when a worker processes the request meanwhile
    status, _ = _while_held(issue_to_first, lambda: coupon_issue_process(request_id=request.pk))
    # then it is issued (after the other commits), not skipped until the next sweep
    assert status == "done"
    assert CouponIssueRequest.objects.values_list("status", "attempts").get(pk=request.pk) == ("done", 1)
    assert sorted(Coupon.objects.values_list("member_id", flat=True)) == sorted([first.pk, second.pk])
    assert issued_count(benefit) == 2


def test_presenting_another_members_coupon_is_refused_without_waiting_for_their_account(shop):
    # given a coupon of member B, whose points account is busy (B is paying at another till)
    member_a, member_b = _enrol(shop, 0), _enrol(shop, 1)
    coupon = coupon_give(BenefitFactory(), member_b)
    till, _ = terminal_create(store=shop, name="till-1")

    def a_pays_with_bs_coupon() -> Any:
        fresh = Member.objects.select_related("tier").get(pk=member_a.pk)
        return purchase_record(
            store=shop,
            terminal=till,
            receipt_no="R-1",
            amount=Decimal("100.00"),
            identified=IdentifiedMember(member=fresh, code_step=1),
            coupon_codes=[coupon.code],
        )

    # when A's purchase presents B's coupon meanwhile
    outcome, finished_first = _while_held(lambda: account_lock(member_b), a_pays_with_bs_coupon, wait=5.0)
    # then it is refused at once (no lock on B's account: two members swapping
    # coupons at two tills cannot deadlock), and nothing was recorded
    assert type(outcome).__name__ == "CouponNotMembers"
    assert finished_first
    assert Purchase.objects.count() == 0
    assert Coupon.objects.get(pk=coupon.pk).status == "issued"
