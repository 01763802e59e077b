"""The money paths under real concurrency: real threads, one database
connection each, started together by a barrier, against real PostgreSQL.

Each test is transactional (``django_db(transaction=True)``): the threads'
commits are real and the test database is flushed afterwards, which also
empties the default tiers made by a data migration; they are created at the
start of each test and put back once the module is done.
"""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone
from rest_framework.test import APIClient

from loyalty.models import IdempotencyKey
from members.models import Member, Store, Terminal
from members.selectors import IdentifiedMember
from members.services import member_enrol, store_get_or_create, terminal_create
from points.batch import ledger_check, points_expire_due
from points.errors import DuplicateReceipt, InsufficientPoints, RefundExceedsPurchase
from points.models import PointsAccount, PointsEntry, PointsLot, Purchase, Refund
from points.services import Refs, points_credit, points_debit, purchase_record, purchase_refund

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


def _enrol(store: Store, index: int = 0) -> Member:
    member, _ = member_enrol(phone=f"1381234{index:04d}", name="王小明", store=store)
    return member


def _run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread, all released at once by a barrier;
    returns each call's result or the exception it raised, in order."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def worker(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            outcomes[index] = call()
        except BaseException as exc:
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [thread for thread in threads if thread.is_alive()] == []
    return outcomes


def _kinds(outcomes: list[Any]) -> Counter[str]:
    return Counter(type(outcome).__name__ for outcome in outcomes)


def _balance(member: Member) -> int:
    return PointsAccount.objects.get(member=member).balance


def _ledger_ok() -> None:
    report = ledger_check()
    assert report.ok, report.violations


# -----------------------------------------------------------------------------
# (a) Redeeming the last points
# -----------------------------------------------------------------------------
def test_concurrent_debits_of_the_last_points_succeed_exactly_once(shop):
    # given a member with exactly 100 points
    member = _enrol(shop)
    points_credit(member=member, points=100, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN))

    def redeem() -> PointsEntry:
        fresh = Member.objects.select_related("tier").get(pk=member.pk)
        return points_debit(member=fresh, points=100, kind=Kind.REDEEM, refs=Refs(source=Source.BENEFIT))

    # when 32 benefit exchanges try to spend all of them at once
    outcomes = _run_together([redeem] * THREADS)
    # then exactly one succeeds and every other is refused for lack of points
    assert _kinds(outcomes) == {"PointsEntry": 1, "InsufficientPoints": THREADS - 1}
    refusals = [outcome for outcome in outcomes if isinstance(outcome, InsufficientPoints)]
    assert {(r.params["available"], r.params["requested"]) for r in refusals} == {(0, 100)}
    assert _balance(member) == 0
    entries = list(
        PointsEntry.objects.filter(member=member).order_by("pk").values_list("kind", "points", "balance_after")
    )
    assert entries == [("bonus", 100, 100), ("redeem", -100, 0)]
    assert PointsLot.objects.get(member=member).remaining == 0
    _ledger_ok()


def test_concurrent_purchases_paying_with_the_last_points_succeed_exactly_once(shop):
    # given a member with exactly 100 points and a till that scanned their code
    member = _enrol(shop)
    points_credit(member=member, points=100, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN))
    till, _ = terminal_create(store=shop, name="till-1")

    def buy(index: int) -> Callable[[], Any]:
        def call() -> Any:
            fresh = Member.objects.select_related("tier").get(pk=member.pk)
            return purchase_record(
                store=shop,
                terminal=till,
                receipt_no=f"R-{index}",
                amount=Decimal("10.00"),
                identified=IdentifiedMember(member=fresh, code_step=1000 + index),
                points_to_use=100,
            )

        return call

    # when 32 bills each try to use those 100 points (¥1 off a ¥10 bill)
    outcomes = _run_together([buy(index) for index in range(THREADS)])
    # then one purchase is recorded (earning 9 on the ¥9 paid), the rest are refused and write nothing
    assert _kinds(outcomes) == {"PurchaseResult": 1, "InsufficientPoints": THREADS - 1}
    (result,) = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert (result.purchase.points_used, result.purchase.points_earned, result.balance) == (100, 9, 9)
    assert Purchase.objects.count() == 1
    assert _balance(member) == 9
    entries = list(
        PointsEntry.objects.filter(member=member).order_by("pk").values_list("kind", "points", "balance_after")
    )
    assert entries == [("bonus", 100, 100), ("redeem", -100, 0), ("earn", 9, 9)]
    assert PointsEntry.objects.filter(balance_after__lt=0).count() == 0
    _ledger_ok()


# -----------------------------------------------------------------------------
# (b) One receipt number at one store
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("with_accounts", [False, True], ids=["first-purchases", "accounts-exist"])
def test_concurrent_purchases_with_one_receipt_number_record_one(shop, with_accounts):
    # given 32 members at 32 tills of one store (so no account lock serialises them),
    # without points accounts yet or with them (the purchase's insert then shares
    # the account lock's statement)
    members = [_enrol(shop, index) for index in range(THREADS)]
    if with_accounts:
        for member in members:
            PointsAccount.objects.create(member=member, balance=0, pending=0, debt=0, updated_at=timezone.now())
    tills = [terminal_create(store=shop, name=f"till-{index}")[0] for index in range(THREADS)]

    def buy(member: Member, till: Terminal) -> Callable[[], Any]:
        def call() -> Any:
            return purchase_record(
                store=shop,
                terminal=till,
                receipt_no="R-0001",
                amount=Decimal("88.80"),
                identified=IdentifiedMember(member=member, code_step=None),
            )

        return call

    # when every till records receipt R-0001 at once
    outcomes = _run_together([buy(member, till) for member, till in zip(members, tills, strict=True)])
    # then one purchase exists, every other till got duplicate_receipt, and one member earned
    assert _kinds(outcomes) == {"PurchaseResult": 1, "DuplicateReceipt": THREADS - 1}
    assert {outcome.code for outcome in outcomes if isinstance(outcome, DuplicateReceipt)} == {"duplicate_receipt"}
    purchase = Purchase.objects.get()
    assert (purchase.store_id, purchase.receipt_no, purchase.amount) == (shop.pk, "R-0001", Decimal("88.80"))
    assert list(PointsEntry.objects.values_list("member_id", "kind", "points")) == [(purchase.member_id, "earn", 88)]
    assert PointsAccount.objects.filter(balance__gt=0).count() == 1
    _ledger_ok()


def test_a_tills_concurrent_retries_of_one_receipt_record_it_once(shop):
    # given a member with points and a till that sends the same purchase 32 times at once
    member = _enrol(shop)
    points_credit(member=member, points=10, kind=PointsEntry.Kind.ADJUST, refs=Refs(source=PointsEntry.Source.OPERATOR))
    till = terminal_create(store=shop, name="till")[0]

    def call() -> Any:
        return purchase_record(
            store=shop, terminal=till, receipt_no="R-0002", amount=Decimal("50.00"),
            identified=IdentifiedMember(member=member, code_step=None),
        )

    outcomes = _run_together([call] * THREADS)
    # then one purchase, every retry told duplicate_receipt, no deadlock, one earn
    assert _kinds(outcomes) == {"PurchaseResult": 1, "DuplicateReceipt": THREADS - 1}
    assert Purchase.objects.filter(receipt_no="R-0002").count() == 1
    assert _balance(member) == 10 + 50
    assert PointsEntry.objects.filter(member=member, kind=PointsEntry.Kind.EARN).count() == 1
    _ledger_ok()


# -----------------------------------------------------------------------------
# (c) One Idempotency-Key, one operation
# -----------------------------------------------------------------------------
def test_concurrent_api_retries_with_one_idempotency_key_execute_once(shop):
    # given a till's API key and a member
    member = _enrol(shop)
    _, key = terminal_create(store=shop, name="till-1")
    body = {"member": member.member_no, "receipt_no": "R-77", "amount": "128.50"}

    def post() -> Any:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        return client.post("/api/v1/terminal/purchases", body, format="json", HTTP_IDEMPOTENCY_KEY="retry-77")

    # when the POS sends the same request 32 times at once
    outcomes = _run_together([post] * THREADS)
    # then all get 201 with the same bytes, and the purchase happened once
    assert [getattr(outcome, "status_code", outcome) for outcome in outcomes] == [201] * THREADS
    assert {outcome.content for outcome in outcomes} == {outcomes[0].content}
    assert outcomes[0].json()["points_earned"] == 128
    assert outcomes[0].json()["balance"] == 128
    assert sum(outcome.get("Idempotent-Replayed") == "true" for outcome in outcomes) == THREADS - 1
    assert Purchase.objects.count() == 1
    assert list(PointsEntry.objects.values_list("kind", "points")) == [("earn", 128)]
    assert IdempotencyKey.objects.count() == 1
    assert _balance(member) == 128
    _ledger_ok()


# -----------------------------------------------------------------------------
# (d) Refunds racing past the amount
# -----------------------------------------------------------------------------
def test_concurrent_refunds_never_refund_more_than_the_purchase(shop):
    # given a ¥100 purchase that paid ¥30 with 3000 points and earned 70
    member = _enrol(shop)
    till, _ = terminal_create(store=shop, name="till-1")
    points_credit(member=member, points=3000, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN))
    purchase_record(
        store=shop,
        terminal=till,
        receipt_no="R-1",
        amount=Decimal("100.00"),
        identified=IdentifiedMember(member=member, code_step=1),
        points_to_use=3000,
    )
    assert _balance(member) == 70

    def refund(index: int) -> Callable[[], Any]:
        def call() -> Any:
            return purchase_refund(
                store=shop, terminal=till, receipt_no="R-1", refund_no=f"F-{index}", amount=Decimal("30.00")
            )

        return call

    # when 32 refunds of ¥30 each arrive at once (¥960 asked of ¥100)
    outcomes = _run_together([refund(index) for index in range(THREADS)])
    # then three are applied (¥90) and the rest are refused
    assert _kinds(outcomes) == {"RefundResult": 3, "RefundExceedsPurchase": THREADS - 3}
    assert {o.detail["refundable"] for o in outcomes if isinstance(o, RefundExceedsPurchase)} == {"10.00"}
    purchase = Purchase.objects.get(receipt_no="R-1")
    assert purchase.refunded_amount == Decimal("90.00")
    # 90 % of the 3000 used comes back and 90 % of the 70 earned is reversed
    assert (purchase.points_returned, purchase.points_reversed) == (2700, 63)
    assert Refund.objects.count() == 3
    assert Refund.objects.aggregate(Sum("amount"), Sum("points_returned"), Sum("points_reversed")) == {
        "amount__sum": Decimal("90.00"),
        "points_returned__sum": 2700,
        "points_reversed__sum": 63,
    }
    assert _balance(member) == 70 + 2700 - 63
    _ledger_ok()


def test_concurrent_full_refunds_with_different_numbers_apply_once(shop):
    # given a ¥50 purchase that earned 50
    member = _enrol(shop)
    till, _ = terminal_create(store=shop, name="till-1")
    purchase_record(
        store=shop,
        terminal=till,
        receipt_no="R-1",
        amount=Decimal("50.00"),
        identified=IdentifiedMember(member=member, code_step=None),
    )

    def refund(index: int) -> Callable[[], Any]:
        def call() -> Any:
            return purchase_refund(
                store=shop, terminal=till, receipt_no="R-1", refund_no=f"F-{index}", amount=Decimal("50.00")
            )

        return call

    # when 32 full refunds arrive at once
    outcomes = _run_together([refund(index) for index in range(THREADS)])
    # then one is applied and the points are reversed once
    assert _kinds(outcomes) == {"RefundResult": 1, "RefundExceedsPurchase": THREADS - 1}
    purchase = Purchase.objects.get(receipt_no="R-1")
    assert (purchase.refunded_amount, purchase.points_reversed) == (Decimal("50.00"), 50)
    assert _balance(member) == 0
    assert list(PointsEntry.objects.order_by("pk").values_list("kind", "points", "balance_after")) == [
        ("earn", 50, 50),
        ("reverse", -50, 0),
    ]
    _ledger_ok()


# -----------------------------------------------------------------------------
# (e) The expiry job while tills sell
# -----------------------------------------------------------------------------
def test_expiry_running_during_purchases_neither_deadlocks_nor_breaks_the_ledger(shop):
    # given 8 members, each with 500 points earned 400 days ago (expired, not yet
    # swept) and 1000 points earned today
    now = timezone.now()
    members = [_enrol(shop, index) for index in range(8)]
    till, _ = terminal_create(store=shop, name="till-1")
    for member in members:
        points_credit(
            member=member, points=500, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN), at=now - timedelta(days=400)
        )
        points_credit(member=member, points=1000, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN), at=now)
    assert PointsLot.objects.filter(expires_at__lte=now, remaining=500).count() == 8

    def buy(member: Member, index: int) -> Callable[[], Any]:
        def call() -> Any:
            fresh = Member.objects.select_related("tier").get(pk=member.pk)
            return purchase_record(
                store=shop,
                terminal=till,
                receipt_no=f"R-{index}",
                amount=Decimal("50.00"),
                identified=IdentifiedMember(member=fresh, code_step=index),
                points_to_use=100,
            )

        return call

    def expire() -> Any:
        return points_expire_due(as_of=now, batch_size=3)

    # when two expiry runs (batches of 3 members) race 30 purchases on the same members
    calls: list[Callable[[], Any]] = [buy(members[index % 8], index) for index in range(THREADS - 2)]
    calls[5:5] = [expire]
    calls[20:20] = [expire]
    outcomes = _run_together(calls)
    # then everything completed: no deadlock, no error
    assert [outcome for outcome in outcomes if isinstance(outcome, BaseException)] == []
    expiry_results = [outcome for outcome in outcomes if type(outcome).__name__ == "ExpiryResult"]
    assert len(expiry_results) == 2
    assert sum(result.points for result in expiry_results) == 8 * 500
    assert sum(result.members for result in expiry_results) == 8
    # each member: 1000 − 100 per purchase + 49 earned per purchase; the 500 expired once
    purchases_per_member = Counter(index % 8 for index in range(THREADS - 2))
    for index, member in enumerate(members):
        bought = purchases_per_member[index]
        assert _balance(member) == 1000 - 100 * bought + 49 * bought
        assert list(PointsEntry.objects.filter(member=member, kind=Kind.EXPIRE).values_list("points", flat=True)) == [
            -500
        ]
    assert Purchase.objects.count() == THREADS - 2
    assert PointsLot.objects.filter(expires_at__lte=now, remaining__gt=0).count() == 0
    _ledger_ok()
