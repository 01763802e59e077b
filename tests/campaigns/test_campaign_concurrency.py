"""Campaign budgets and grants under real concurrency: real threads, one
database connection each, started together by a barrier, against real
PostgreSQL.

Each test is transactional (``django_db(transaction=True)``): the threads'
commits are real and the test database is flushed afterwards, which also
empties the default tiers made by a data migration; they are created at the
start of each test (and put back after it by ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from campaigns.models import Campaign, CampaignGrant, Coupon
from campaigns.services.campaigns import campaign_run
from members.models import Member, Store
from members.selectors import IdentifiedMember
from members.services import member_enrol, store_get_or_create
from points.batch import ledger_check
from points.models import PointsAccount, Purchase
from points.services import PurchaseResult, purchase_record
from tests.campaigns.factories import BenefitFactory, CampaignFactory, spent

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16
Kind = Campaign.Kind


def _create_default_tiers() -> None:
    from django.apps import apps

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


@pytest.fixture(autouse=True)
def _default_tiers(transactional_db: Any) -> None:
    # An earlier transactional test may have flushed them (tests/conftest.py
    # puts them back after each one; this makes the module independent of it).
    _create_default_tiers()


@pytest.fixture
def shop() -> Store:
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    return store


def _enrol(store: Store, index: int, **fields: Any) -> Member:
    member, _ = member_enrol(phone=f"1381234{index:04d}", name=f"会员{index}", store=store, **fields)
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


def _ledger_ok() -> None:
    report = ledger_check()
    assert report.ok, report.violations


def _purchase(store: Store, member_id: int, receipt_no: str, amount: str = "100") -> Callable[[], PurchaseResult]:
    """A till recording a purchase by member number (a fresh member row, as a request would load it)."""

    def call() -> PurchaseResult:
        member = Member.objects.select_related("tier").get(pk=member_id)
        return purchase_record(
            store=store,
            terminal=None,
            receipt_no=receipt_no,
            amount=Decimal(amount),
            identified=IdentifiedMember(member=member, code_step=None),
        )

    return call


def _grant_points(campaign: Campaign) -> int:
    return CampaignGrant.objects.filter(campaign=campaign).aggregate(total=Sum("points"))["total"] or 0


# -----------------------------------------------------------------------------
# Points budget
# -----------------------------------------------------------------------------
def test_concurrent_purchases_never_exceed_the_points_budget(shop):
    # given double points with a budget of 1050 extra points; 16 members each
    # buying ¥100 (100 extra points each) at the same moment
    campaign = CampaignFactory(starts_at=timezone.now() - timedelta(days=1), budget_points=1050)
    members = [_enrol(shop, n) for n in range(THREADS)]
    # when
    outcomes = _run_together([_purchase(shop, m.pk, f"R-{n}") for n, m in enumerate(members)])
    # then: exactly ten purchases fit; the others earn without the campaign
    assert _kinds(outcomes) == {"PurchaseResult": THREADS}
    assert Counter(Purchase.objects.values_list("points_earned", "multiplier")) == {
        (200, Decimal("2")): 10,
        (100, Decimal("1")): 6,
    }
    assert spent(campaign) == (1000, 0)
    assert _grant_points(campaign) == 1000
    assert CampaignGrant.objects.filter(campaign=campaign).count() == 10
    assert PointsAccount.objects.aggregate(total=Sum("balance"))["total"] == 10 * 200 + 6 * 100
    _ledger_ok()


def test_concurrent_first_purchases_never_exceed_the_bonus_budget(shop):
    # given 50 points on a first purchase, 275 points of budget, 16 new members
    campaign = CampaignFactory(
        kind=Kind.BONUS,
        condition=Campaign.Condition.FIRST_PURCHASE,
        points=50,
        multiplier=1,
        starts_at=timezone.now() - timedelta(days=1),
        budget_points=275,
    )
    members = [_enrol(shop, n) for n in range(THREADS)]
    # when
    outcomes = _run_together([_purchase(shop, m.pk, f"R-{n}", "10") for n, m in enumerate(members)])
    # then
    assert _kinds(outcomes) == {"PurchaseResult": THREADS}
    assert Counter(o.balance for o in outcomes) == {60: 5, 10: 11}
    assert spent(campaign) == (250, 0)
    assert _grant_points(campaign) == 250
    _ledger_ok()


def test_concurrent_purchases_of_one_member_respect_the_per_member_limit(shop):
    # given double points for at most 3 purchases per member
    campaign = CampaignFactory(starts_at=timezone.now() - timedelta(days=1), per_member_limit=3)
    member = _enrol(shop, 0)
    # when the member's purchases arrive at 16 tills at once
    outcomes = _run_together([_purchase(shop, member.pk, f"R-{n}") for n in range(THREADS)])
    # then
    assert _kinds(outcomes) == {"PurchaseResult": THREADS}
    assert Counter(o.purchase.points_earned for o in outcomes) == {200: 3, 100: 13}
    assert spent(campaign) == (300, 0)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Coupon budget and scheduled runs
# -----------------------------------------------------------------------------
def test_overlapping_runs_of_a_coupon_grant_give_each_member_one_coupon_within_budget(shop):
    # given 12 members and a grant of at most 8 coupons
    members = [_enrol(shop, n) for n in range(12)]
    campaign = CampaignFactory(
        kind=Kind.COUPON_GRANT,
        benefit=BenefitFactory(),
        multiplier=1,
        budget_coupons=8,
        starts_at=timezone.now() - timedelta(days=1),
    )

    def run() -> int:
        return campaign_run(campaign=Campaign.objects.get(pk=campaign.pk))

    # when four runs overlap (admin "run now" while beat runs it)
    outcomes = _run_together([run for _ in range(4)])
    # then
    assert _kinds(outcomes) == {"int": 4}
    assert sum(outcomes) == 8
    assert spent(campaign) == (0, 8)
    per_member = Counter(Coupon.objects.values_list("member_id", flat=True))
    assert sorted(per_member.values()) == [1] * 8
    assert set(per_member) <= {m.pk for m in members}
    assert CampaignGrant.objects.filter(campaign=campaign).count() == 8


def test_birthday_run_while_the_members_buy_does_not_deadlock(shop):
    # given double points and a gift in the birthday month; 8 members born this month
    month = timezone.localtime().month
    members = [_enrol(shop, n, birthday=date(1990, month, 1)) for n in range(8)]
    campaign = CampaignFactory(
        kind=Kind.BIRTHDAY, benefit=BenefitFactory(), starts_at=timezone.now() - timedelta(days=1)
    )

    def run() -> int:
        return campaign_run(campaign=Campaign.objects.get(pk=campaign.pk))

    # when the scheduled run and each member's purchase happen at once
    outcomes = _run_together([run, run] + [_purchase(shop, m.pk, f"R-{n}") for n, m in enumerate(members)])
    # then
    assert _kinds(outcomes) == {"int": 2, "PurchaseResult": 8}
    assert sum(outcomes[:2]) == 8
    assert Coupon.objects.count() == 8
    assert all(o.purchase.points_earned == 200 for o in outcomes[2:])
    assert spent(campaign) == (800, 8)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Referrals
# -----------------------------------------------------------------------------
def test_referees_first_purchases_while_the_referrer_buys_reward_each_once_and_threshold_once(shop):
    # given a referrer with 8 referees, double points, and a referral campaign
    # of 100 points per referee plus 200 at 3 referrals
    starts = timezone.now() - timedelta(days=1)
    CampaignFactory(starts_at=starts)
    referral = CampaignFactory(
        kind=Kind.REFERRAL, multiplier=1, points=100, threshold_count=3, threshold_points=200, starts_at=starts
    )
    referrer = _enrol(shop, 0)
    referees = [_enrol(shop, n, referrer=referrer) for n in range(1, 9)]
    # when the referees' first purchases and 8 purchases of the referrer happen at once
    calls = [_purchase(shop, m.pk, f"R-{n}") for n, m in enumerate(referees)]
    calls += [_purchase(shop, referrer.pk, f"S-{n}") for n in range(8)]
    outcomes = _run_together(calls)
    # then
    assert _kinds(outcomes) == {"PurchaseResult": 16}, [str(o) for o in outcomes if isinstance(o, Exception)][:2]
    references = Counter(CampaignGrant.objects.filter(campaign=referral).values_list("reference", flat=True))
    assert references == {**{f"referee:{m.pk}": 1 for m in referees}, "threshold:3": 1}
    assert spent(referral) == (8 * 100 + 200, 0)
    assert PointsAccount.objects.get(member=referrer).balance == 8 * 200 + 8 * 100 + 200
    _ledger_ok()
