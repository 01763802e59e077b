"""Campaigns, every kind, through the services a till, a member and beat call:
multipliers (dates, weekdays, member day, stores, tiers, stacking, per-member
limit, budget), first-purchase and check-in streak bonuses, coupon grants to a
segment, birthday months, referrals, reactivation waves, re-runs of the
scheduled jobs, results and the dry-run forecast.

Times are local (Asia/Shanghai) and passed explicitly (``at=`` / ``now=``);
only the reactivation waves, which count days from the time a member entered
the campaign (the grant's ``created_at``), run relative to the real clock.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns.models import Benefit, Campaign, CampaignGrant, Coupon, OutboxMessage, Segment
from campaigns.services.campaigns import (
    campaign_dry_run,
    campaign_multiplier_for,
    campaign_results,
    campaign_run,
    campaigns_run_scheduled,
)
from members.models import Member, MemberEvent, MemberToken, Store, Tier, TierChange
from members.services import member_freeze, member_unfreeze
from points.batch import ledger_check
from points.models import CheckIn, PointsEntry, Purchase
from points.services import member_check_in, purchase_record, purchase_refund
from tests.campaigns.factories import BenefitFactory, CampaignFactory, coupon_snapshot, grants_of, spent
from tests.points.factories import (
    MemberFactory,
    account_of,
    buy,
    by_code,
    entries_of,
    ledger_snapshot,
    local,
    member_in_tier,
)

pytestmark = pytest.mark.django_db

Kind = Campaign.Kind
T = local(2026, 3, 2, 10, 0)  # a Monday
LOGIN = "/api/v1/auth/wechat"
REGISTER = "/api/v1/auth/register"
ENROL = "/api/v1/terminal/members"
ME = "/api/v1/me"
CHECK_IN = "/api/v1/me/check-in"


def _ledger_ok() -> None:
    report = ledger_check()
    assert report.ok, report.violations


def _earned(result: Any) -> tuple[int, Decimal]:
    """(points earned, multiplier) of a purchase, as stored."""
    return Purchase.objects.values_list("points_earned", "multiplier").get(pk=result.purchase.pk)


def _bonus(**fields: Any) -> Campaign:
    fields.setdefault("multiplier", Decimal("1"))
    return CampaignFactory(kind=Kind.BONUS, **fields)


def _coupons_of(member: Member) -> list[tuple[str, str, str]]:
    """(benefit name, source, reference) of the member's coupons, oldest first."""
    return list(Coupon.objects.filter(member=member).order_by("pk").values_list("benefit__name", "source", "reference"))


def _counts() -> dict[str, int]:
    return {
        "coupons": Coupon.objects.count(),
        "grants": CampaignGrant.objects.count(),
        "entries": PointsEntry.objects.count(),
        "messages": OutboxMessage.objects.count(),
    }


def _sleeping(member: Member) -> Member:
    Member.objects.filter(pk=member.pk).update(lifecycle_stage=Member.Lifecycle.SLEEPING)
    member.refresh_from_db()
    return member


# -----------------------------------------------------------------------------
# Points multipliers
# -----------------------------------------------------------------------------
def test_multiplier_applies_from_its_start_until_its_end_excluded(store, terminal, member):
    # given double points from Monday 10:00 until Wednesday 00:00
    campaign = CampaignFactory(starts_at=local(2026, 3, 2, 10, 0), ends_at=local(2026, 3, 4))
    # when
    before = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=local(2026, 3, 2, 9, 59, 59)
    )
    first = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-2", amount="100", at=local(2026, 3, 2, 10, 0)
    )
    last = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-3", amount="100", at=local(2026, 3, 3, 23, 59, 59)
    )
    after = buy(store=store, terminal=terminal, member=member, receipt_no="R-4", amount="100", at=local(2026, 3, 4))
    # then
    assert [_earned(r) for r in (before, first, last, after)] == [
        (100, Decimal("1")),
        (200, Decimal("2")),
        (200, Decimal("2")),
        (100, Decimal("1")),
    ]
    assert entries_of(member) == [
        ("earn", 100, 100, "purchase"),
        ("earn", 200, 300, "purchase"),
        ("earn", 200, 500, "purchase"),
        ("earn", 100, 600, "purchase"),
    ]
    assert grants_of(campaign) == [
        (member.pk, f"purchase:{first.purchase.pk}", 100, False),
        (member.pk, f"purchase:{last.purchase.pk}", 100, False),
    ]
    assert spent(campaign) == (200, 0)
    _ledger_ok()


@pytest.mark.parametrize("status", [Campaign.Status.DRAFT, Campaign.Status.PAUSED, Campaign.Status.ENDED])
def test_multiplier_not_switched_on_does_nothing(store, terminal, member, status):
    # given
    campaign = CampaignFactory(status=status)
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    # then
    assert _earned(result) == (100, Decimal("1"))
    assert grants_of(campaign) == []
    assert spent(campaign) == (0, 0)
    _ledger_ok()


def test_weekday_multiplier_applies_on_the_listed_local_weekdays_only(store, terminal, member):
    # given double points on Saturdays and Sundays
    campaign = CampaignFactory(weekdays=[6, 7])
    # when: Friday 6th, Saturday 7th, Sunday 8th, Monday 9th March 2026
    results = [
        buy(
            store=store,
            terminal=terminal,
            member=member,
            receipt_no=f"R-{day}",
            amount="100",
            at=local(2026, 3, day, 12),
        )
        for day in (6, 7, 8, 9)
    ]
    # then
    assert [_earned(r)[0] for r in results] == [100, 200, 200, 100]
    assert spent(campaign) == (200, 0)
    assert account_of(member) == (600, 0, 0)
    _ledger_ok()


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(2026, 3, 7, 23, 59, 59), 100),
        (local(2026, 3, 8, 0, 0), 200),  # 2026-03-07 16:00 UTC: the 8th in Shanghai
        (local(2026, 3, 8, 7, 30), 200),  # 2026-03-07 23:30 UTC
        (local(2026, 3, 8, 23, 59, 59), 200),
        (local(2026, 3, 9, 0, 0), 100),  # 2026-03-08 16:00 UTC: the 9th in Shanghai
        (local(2026, 4, 8, 12, 0), 200),  # every month
    ],
)
def test_member_day_is_the_8th_of_every_month_in_local_time(store, terminal, member, at, expected):
    # given the monthly member day on the 8th, double points
    campaign = CampaignFactory(month_day=8)
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=at)
    # then
    assert _earned(result)[0] == expected
    assert spent(campaign) == (expected - 100, 0)
    _ledger_ok()


def test_multiplier_limited_to_stores_applies_only_there(store, other_store, terminal, member):
    # given double points at SH001 only
    campaign = CampaignFactory(stores=[store])
    # when
    here = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    elsewhere = buy(store=other_store, terminal=None, member=member, receipt_no="R-1", amount="100", at=T)
    # then
    assert (_earned(here), _earned(elsewhere)) == ((200, Decimal("2")), (100, Decimal("1")))
    assert grants_of(campaign) == [(member.pk, f"purchase:{here.purchase.pk}", 100, False)]
    _ledger_ok()


def test_multiplier_limited_to_tiers_applies_to_those_tiers_only(store, terminal, member):
    # given double points for gold members; a gold member (x1.25) and a silver one
    campaign = CampaignFactory(tiers=["gold"])
    gold = member_in_tier(MemberFactory(store=store), "gold", since=T - timedelta(days=10))
    # when
    silver_result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    gold_result = buy(store=store, terminal=terminal, member=gold, receipt_no="R-2", amount="100", at=T)
    # then: gold earns 100 x 1.25 x 2, of which 125 come from the campaign
    assert _earned(silver_result) == (100, Decimal("1"))
    assert _earned(gold_result) == (250, Decimal("2"))
    assert grants_of(campaign) == [(gold.pk, f"purchase:{gold_result.purchase.pk}", 125, False)]
    assert spent(campaign) == (125, 0)
    _ledger_ok()


def test_largest_non_stackable_multiplier_applies_alone(store, terminal, member):
    # given three non-stackable multipliers
    x15 = CampaignFactory(multiplier=Decimal("1.5"))
    x3 = CampaignFactory(multiplier=Decimal("3"))
    x2 = CampaignFactory(multiplier=Decimal("2"))
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    # then
    assert _earned(result) == (300, Decimal("3"))
    assert (grants_of(x15), grants_of(x2)) == ([], [])
    assert grants_of(x3) == [(member.pk, f"purchase:{result.purchase.pk}", 200, False)]
    assert (spent(x15), spent(x3), spent(x2)) == ((0, 0), (200, 0), (0, 0))
    assert campaign_multiplier_for(member=member, store=store, at=T) == Decimal("3")
    _ledger_ok()


def test_stackable_multipliers_multiply_the_largest_non_stackable_one(store, terminal, member):
    # given x2 and x1.5 (not stackable), x1.5 and x1.2 stackable
    x2 = CampaignFactory(multiplier=Decimal("2"))
    x15 = CampaignFactory(multiplier=Decimal("1.5"))
    stack15 = CampaignFactory(multiplier=Decimal("1.5"), stackable=True)
    stack12 = CampaignFactory(multiplier=Decimal("1.2"), stackable=True)
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    # then: 100 x 2 x 1.5 x 1.2 = 360; the 260 extra points are shared by each
    # campaign's excess over 1 (1 : 0.5 : 0.2), the rounding left to the first
    assert _earned(result) == (360, Decimal("3.6"))
    reference = f"purchase:{result.purchase.pk}"
    assert grants_of(x2) == [(member.pk, reference, 154, False)]
    assert grants_of(stack15) == [(member.pk, reference, 76, False)]
    assert grants_of(stack12) == [(member.pk, reference, 30, False)]
    assert grants_of(x15) == []
    assert [spent(c)[0] for c in (x2, x15, stack15, stack12)] == [154, 0, 76, 30]
    _ledger_ok()


def test_per_member_limit_counts_boosted_purchases_of_each_member(store, terminal, member):
    # given double points for at most two purchases per member
    campaign = CampaignFactory(per_member_limit=2)
    other = MemberFactory(store=store)
    # when
    mine = [
        buy(store=store, terminal=terminal, member=member, receipt_no=f"R-{n}", amount="100", at=T + timedelta(hours=n))
        for n in range(3)
    ]
    theirs = buy(store=store, terminal=terminal, member=other, receipt_no="R-9", amount="100", at=T)
    # then
    assert [_earned(r)[0] for r in mine] == [200, 200, 100]
    assert _earned(theirs)[0] == 200
    assert spent(campaign) == (300, 0)
    assert [g[0] for g in grants_of(campaign)] == [member.pk, member.pk, other.pk]
    _ledger_ok()


def test_budget_cap_is_never_exceeded_the_purchase_that_would_exceed_it_earns_without_the_campaign(
    store, terminal, member
):
    # given double points with a budget of 250 extra points
    campaign = CampaignFactory(budget_points=250)
    # when: each ¥100 takes 100 of the budget, ¥50 takes 50, ¥1 takes 1
    amounts = ["100", "100", "100", "50", "1"]
    results = [
        buy(
            store=store,
            terminal=terminal,
            member=member,
            receipt_no=f"R-{n}",
            amount=amount,
            at=T + timedelta(minutes=n),
        )
        for n, amount in enumerate(amounts)
    ]
    # then: the third would need 300 of 250, the ¥50 fits exactly, the ¥1 no longer
    assert [_earned(r) for r in results] == [
        (200, Decimal("2")),
        (200, Decimal("2")),
        (100, Decimal("1")),
        (100, Decimal("2")),
        (1, Decimal("1")),
    ]
    assert spent(campaign) == (250, 0)
    assert sum(g[2] for g in grants_of(campaign)) == 250
    assert account_of(member) == (601, 0, 0)
    _ledger_ok()


def test_when_the_best_multiplier_is_out_of_budget_the_next_best_applies(store, terminal, member):
    # given x3 with a budget of 200 extra points, and x2 without a budget
    x3 = CampaignFactory(multiplier=Decimal("3"), budget_points=200)
    x2 = CampaignFactory(multiplier=Decimal("2"))
    # when
    first = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    second = buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="100", at=T)
    # then
    assert (_earned(first), _earned(second)) == ((300, Decimal("3")), (200, Decimal("2")))
    assert (spent(x3), spent(x2)) == ((200, 0), (100, 0))
    _ledger_ok()


def test_claimed_receipt_earns_the_multiplier_of_its_purchase_time(store, terminal, member):
    # given a receipt recorded without a member on the member day
    from points.services import purchase_claim

    campaign = CampaignFactory(month_day=8)
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="100", at=local(2026, 3, 8, 12))
    # when the member claims it the next day
    result = purchase_claim(member=member, store=store, receipt_no="R-1", at=local(2026, 3, 9, 12))
    # then
    assert _earned(result) == (200, Decimal("2"))
    assert spent(campaign) == (100, 0)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Bonus points on a condition
# -----------------------------------------------------------------------------
def test_first_purchase_bonus_is_given_once(store, terminal, member):
    # given 50 bonus points on the first purchase
    campaign = _bonus(condition=Campaign.Condition.FIRST_PURCHASE, points=50)
    # when
    first = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    second = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-2", amount="100", at=T + timedelta(days=1)
    )
    # then
    assert (first.balance, second.balance) == (150, 250)
    assert entries_of(member) == [
        ("earn", 100, 100, "purchase"),
        ("bonus", 50, 150, "campaign"),
        ("earn", 100, 250, "purchase"),
    ]
    bonus = PointsEntry.objects.get(member=member, kind=PointsEntry.Kind.BONUS)
    assert (bonus.reference, bonus.reason) == (f"campaign:{campaign.pk}", campaign.name)
    assert grants_of(campaign) == [(member.pk, "first_purchase", 50, False)]
    assert CampaignGrant.objects.get(campaign=campaign).entry == bonus
    assert spent(campaign) == (50, 0)
    _ledger_ok()


def test_no_first_purchase_bonus_for_a_member_who_bought_before(store, terminal, member):
    # given a member who bought before the campaign started
    buy(store=store, terminal=terminal, member=member, receipt_no="R-0", amount="100", at=T - timedelta(days=1))
    campaign = _bonus(condition=Campaign.Condition.FIRST_PURCHASE, points=50, starts_at=T)
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    # then
    assert result.balance == 200
    assert grants_of(campaign) == []
    assert spent(campaign) == (0, 0)
    _ledger_ok()


def test_first_purchase_bonus_limited_to_a_store_is_lost_by_a_first_purchase_elsewhere(
    store, other_store, terminal, member
):
    # given 50 points on a first purchase at SH001
    campaign = _bonus(condition=Campaign.Condition.FIRST_PURCHASE, points=50, stores=[store])
    # when the first purchase is at BJ001, the second at SH001
    buy(store=other_store, terminal=None, member=member, receipt_no="R-1", amount="100", at=T)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="100", at=T + timedelta(hours=1))
    # then
    assert grants_of(campaign) == []
    assert account_of(member) == (200, 0, 0)
    _ledger_ok()


def test_first_purchase_bonus_budget_is_never_exceeded(store, terminal):
    # given 50 points per first purchase, 120 points of budget
    campaign = _bonus(condition=Campaign.Condition.FIRST_PURCHASE, points=50, budget_points=120)
    members = [MemberFactory(store=store) for _ in range(3)]
    # when
    results = [
        buy(store=store, terminal=terminal, member=m, receipt_no=f"R-{n}", amount="10", at=T + timedelta(minutes=n))
        for n, m in enumerate(members)
    ]
    # then
    assert [r.balance for r in results] == [60, 60, 10]
    assert spent(campaign) == (100, 0)
    assert [g[0] for g in grants_of(campaign)] == [members[0].pk, members[1].pk]
    _ledger_ok()


def _check_in_days(member: Member, days: list[date]) -> None:
    for day in days:
        member_check_in(member=member, at=datetime(day.year, day.month, day.day, 9, tzinfo=T.tzinfo))


def test_check_in_streak_bonus_once_per_streak_of_seven_days(member):
    # given 100 bonus points for 7 consecutive daily check-ins
    campaign = _bonus(condition=Campaign.Condition.CHECK_IN_STREAK, streak_days=7, points=100)
    first = date(2026, 3, 1)
    # when the member checks in 15 days in a row
    _check_in_days(member, [first + timedelta(days=n) for n in range(15)])
    # then: a bonus after the 7th and after the 14th day, not every day of the streak
    bonuses = list(
        PointsEntry.objects.filter(member=member, source=PointsEntry.Source.CAMPAIGN)
        .order_by("pk")
        .values_list("points", "created_at")
    )
    assert bonuses == [(100, local(2026, 3, 7, 9)), (100, local(2026, 3, 14, 9))]
    assert grants_of(campaign) == [
        (member.pk, "streak:2026-03-01:1", 100, False),
        (member.pk, "streak:2026-03-01:2", 100, False),
    ]
    assert account_of(member) == (15 * settings.LOYALTY_CHECK_IN_POINTS + 200, 0, 0)
    assert spent(campaign) == (200, 0)
    _ledger_ok()


def test_a_missed_day_starts_a_new_streak(member):
    # given
    campaign = _bonus(condition=Campaign.Condition.CHECK_IN_STREAK, streak_days=7, points=100)
    first = date(2026, 3, 1)
    # when: 6 days, a day missed, then 7 days
    _check_in_days(member, [first + timedelta(days=n) for n in range(6)])
    _check_in_days(member, [first + timedelta(days=n) for n in range(7, 14)])
    # then: one bonus, on the 7th day of the new streak
    assert grants_of(campaign) == [(member.pk, "streak:2026-03-08:1", 100, False)]
    assert CheckIn.objects.filter(member=member).count() == 13
    assert account_of(member) == (13 * settings.LOYALTY_CHECK_IN_POINTS + 100, 0, 0)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Coupon grant to a segment
# -----------------------------------------------------------------------------
@pytest.fixture
def gold_segment(db: Any) -> Segment:
    segment = Segment.objects.create(name="金卡会员(接受营销)", marketing_consent_only=True)
    segment.tiers.set(Tier.objects.filter(code="gold"))
    return segment


def _gold(store: Store, *, consent: bool = True) -> Member:
    member = MemberFactory(store=store, marketing_consent=consent)
    return member_in_tier(member, "gold", since=T - timedelta(days=30))


def test_coupon_grant_to_a_segment_gives_each_member_one_coupon_however_often_it_runs(store, gold_segment):
    # given gold members who accept marketing (two), one who does not, a frozen
    # one and a silver one
    inside = [_gold(store), _gold(store)]
    _gold(store, consent=False)
    frozen = _gold(store)
    member_freeze(member=frozen, by_user=None, reason="风控")
    MemberFactory(store=store, marketing_consent=True)
    benefit = BenefitFactory(name="金卡专享满200减30")
    campaign = CampaignFactory(kind=Kind.COUPON_GRANT, segment=gold_segment, benefit=benefit, multiplier=1)
    # when it runs twice
    first = campaign_run(campaign=campaign, at=T)
    second = campaign_run(campaign=campaign, at=T + timedelta(days=1))
    # then
    assert (first, second) == (2, 0)
    for member in inside:
        assert _coupons_of(member) == [("金卡专享满200减30", "campaign", f"campaign:{campaign.pk}:grant")]
    assert Coupon.objects.count() == 2
    assert sorted(g[0] for g in grants_of(campaign)) == sorted(m.pk for m in inside)
    assert all(g[1:] == ("grant", 0, True) for g in grants_of(campaign))
    assert spent(campaign) == (0, 2)
    assert Benefit.objects.get(pk=benefit.pk).issued_count == 2


def test_coupon_grant_respects_its_coupon_budget(store, gold_segment):
    # given three members in the segment and a budget of two coupons
    members = [_gold(store) for _ in range(3)]
    campaign = CampaignFactory(
        kind=Kind.COUPON_GRANT, segment=gold_segment, benefit=BenefitFactory(), multiplier=1, budget_coupons=2
    )
    # when it runs twice
    made = [campaign_run(campaign=campaign, at=T), campaign_run(campaign=campaign, at=T + timedelta(days=1))]
    # then
    assert made == [2, 0]
    assert Coupon.objects.filter(member__in=members).count() == 2
    assert CampaignGrant.objects.filter(campaign=campaign).count() == 2
    assert spent(campaign) == (0, 2)


def test_coupon_grant_not_running_gives_nothing(store, gold_segment):
    # given a draft campaign, and an active one that has ended
    _gold(store)
    draft = CampaignFactory(kind=Kind.COUPON_GRANT, segment=gold_segment, benefit=BenefitFactory(), status="draft")
    ended = CampaignFactory(kind=Kind.COUPON_GRANT, segment=gold_segment, benefit=BenefitFactory(), ends_at=T)
    # when
    made = [campaign_run(campaign=draft, at=T), campaign_run(campaign=ended, at=T)]
    # then
    assert made == [0, 0]
    assert Coupon.objects.count() == 0


# -----------------------------------------------------------------------------
# Birthday month
# -----------------------------------------------------------------------------
def test_birthday_gift_once_a_year_on_the_first_run_of_the_birthday_month(store):
    # given members born in March and April, one without a birthday
    march = MemberFactory(store=store, birthday=date(1990, 3, 15))
    april = MemberFactory(store=store, birthday=date(1992, 4, 2))
    MemberFactory(store=store)
    gift = BenefitFactory(name="生日礼")
    campaign = CampaignFactory(kind=Kind.BIRTHDAY, benefit=gift)
    # when the scheduled run happens on several days
    made = [
        campaign_run(campaign=campaign, at=local(2026, 3, 1, 9)),
        campaign_run(campaign=campaign, at=local(2026, 3, 15, 9)),
        campaign_run(campaign=campaign, at=local(2026, 4, 1, 9)),
        campaign_run(campaign=campaign, at=local(2026, 4, 30, 9)),
        campaign_run(campaign=campaign, at=local(2027, 3, 1, 9)),
    ]
    # then
    assert made == [1, 0, 1, 0, 1]
    reference = f"campaign:{campaign.pk}:birthday"
    assert _coupons_of(march) == [
        ("生日礼", "campaign", f"{reference}:2026"),
        ("生日礼", "campaign", f"{reference}:2027"),
    ]
    assert _coupons_of(april) == [("生日礼", "campaign", f"{reference}:2026")]
    assert Coupon.objects.count() == 3
    assert spent(campaign) == (0, 3)
    issued = Coupon.objects.filter(member=march).order_by("pk").values_list("issued_at", flat=True)
    assert list(issued) == [local(2026, 3, 1, 9), local(2027, 3, 1, 9)]


def test_birthday_multiplier_applies_to_purchases_in_the_birthday_month(store, terminal):
    # given double points in the birthday month
    march = MemberFactory(store=store, birthday=date(1990, 3, 15))
    april = MemberFactory(store=store, birthday=date(1992, 4, 2))
    campaign = CampaignFactory(kind=Kind.BIRTHDAY, benefit=BenefitFactory())
    # when
    in_month = buy(
        store=store, terminal=terminal, member=march, receipt_no="R-1", amount="100", at=local(2026, 3, 31, 23)
    )
    next_month = buy(
        store=store, terminal=terminal, member=march, receipt_no="R-2", amount="100", at=local(2026, 4, 1, 0, 30)
    )
    other = buy(store=store, terminal=terminal, member=april, receipt_no="R-3", amount="100", at=local(2026, 3, 31, 23))
    # then
    assert [_earned(r) for r in (in_month, next_month, other)] == [
        (200, Decimal("2")),
        (100, Decimal("1")),
        (100, Decimal("1")),
    ]
    assert spent(campaign) == (100, 0)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Referral
# -----------------------------------------------------------------------------
@pytest.fixture
def referral(db: Any) -> Campaign:
    """100 points per referee's first purchase, 200 more at 3 referrals."""
    return CampaignFactory(kind=Kind.REFERRAL, multiplier=1, points=100, threshold_count=3, threshold_points=200)


def _referee(store: Store, referrer: Member) -> Member:
    return MemberFactory(store=store, referrer=referrer)


def _session(client: APIClient, openid: str) -> str:
    response = client.post(LOGIN, {"code": f"dev-{openid}"}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["wechat_session"]


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


def _member_rows() -> tuple[int, ...]:
    return (
        Member.objects.count(),
        MemberEvent.objects.count(),
        TierChange.objects.count(),
        MemberToken.objects.count(),
    )


def test_register_with_a_referral_code_sets_the_referrer(anon_client, member):
    # given a WeChat session and the referral code of a member, typed in lower case
    session = _session(anon_client, "openid-new")
    # when
    response = anon_client.post(
        REGISTER,
        {"wechat_session": session, "phone": "13900001111", "referral_code": f" {member.referral_code.lower()} "},
        format="json",
    )
    # then
    assert response.status_code == 201, response.content
    new = Member.objects.get(member_no=response.json()["member_no"])
    assert new.referrer == member
    assert len(new.referral_code) == 8
    assert new.referral_code != member.referral_code


def test_enrol_at_the_till_with_a_referral_code_sets_the_referrer(terminal_client, member):
    # given a member's referral code (the fixture member's)
    # when a walk-in customer is enrolled with it
    response = terminal_client.post(
        ENROL, {"phone": "13900002222", "name": "李雷", "referral_code": member.referral_code}, format="json"
    )
    # then
    assert response.status_code == 201, response.content
    assert Member.objects.get(member_no=response.json()["member_no"]).referrer == member


@pytest.mark.parametrize("code", ["NOPE2345", "ZZZZZZZZ"])
def test_invalid_referral_code_is_400_and_writes_nothing(anon_client, terminal_client, member, code):
    # given
    session = _session(anon_client, "openid-new")
    before = _member_rows()
    # when
    registered = anon_client.post(
        REGISTER, {"wechat_session": session, "phone": "13900001111", "referral_code": code}, format="json"
    )
    enrolled = terminal_client.post(ENROL, {"phone": "13900002222", "referral_code": code}, format="json")
    # then
    for response in (registered, enrolled):
        assert response.status_code == 400, response.content
        assert _error(response)["code"] == "invalid_referral_code"
    assert _member_rows() == before


def test_referral_code_of_a_frozen_member_is_invalid(terminal_client, member):
    # given
    member_freeze(member=member, by_user=None, reason="风控")
    before = _member_rows()
    # when
    response = terminal_client.post(
        ENROL, {"phone": "13900002222", "referral_code": member.referral_code}, format="json"
    )
    # then
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_referral_code"
    assert _member_rows() == before


def test_a_member_cannot_refer_themselves(anon_client, terminal_client, member):
    # given a store member who now registers in the mini-program with their own code
    session = _session(anon_client, "openid-self")
    # when
    registered = anon_client.post(
        REGISTER,
        {"wechat_session": session, "phone": "13812345678", "referral_code": member.referral_code},
        format="json",
    )
    enrolled = terminal_client.post(
        ENROL, {"phone": "13812345678", "referral_code": member.referral_code}, format="json"
    )
    # then: the existing member is returned and has no referrer
    assert (registered.status_code, enrolled.status_code) == (200, 200)
    member.refresh_from_db()
    assert member.referrer is None


def test_an_existing_member_does_not_get_a_referrer_afterwards(terminal_client, member, store):
    # given another member's code
    other = MemberFactory(store=store)
    # when the existing member is enrolled again with it
    response = terminal_client.post(
        ENROL, {"phone": "13812345678", "referral_code": other.referral_code}, format="json"
    )
    # then
    assert response.status_code == 200
    member.refresh_from_db()
    assert member.referrer is None


def test_me_shows_the_referral_code_and_whether_checked_in_today(member_client, member):
    # given a member imported without a referral code
    Member.objects.filter(pk=member.pk).update(referral_code=None)
    # when
    before = member_client.get(ME).json()
    checked = member_client.post(CHECK_IN)
    after = member_client.get(ME).json()
    # then: a code is made on first use and kept
    member.refresh_from_db()
    assert checked.status_code == 201, checked.content
    assert before["referral_code"] == after["referral_code"] == member.referral_code
    assert len(member.referral_code) == 8
    assert (before["checked_in_today"], after["checked_in_today"]) == (False, True)


def test_referrer_is_rewarded_once_per_referee_on_the_referees_first_purchase(store, terminal, member, referral):
    # given a referee of the member
    referee = _referee(store, member)
    # when the referee buys twice
    buy(store=store, terminal=terminal, member=referee, receipt_no="R-1", amount="100", at=T)
    buy(store=store, terminal=terminal, member=referee, receipt_no="R-2", amount="100", at=T + timedelta(days=1))
    # then
    assert entries_of(member) == [("bonus", 100, 100, "campaign")]
    assert entries_of(referee) == [("earn", 100, 100, "purchase"), ("earn", 100, 200, "purchase")]
    assert grants_of(referral) == [(member.pk, f"referee:{referee.pk}", 100, False)]
    assert spent(referral) == (100, 0)
    _ledger_ok()


def test_threshold_reward_once_at_three_successful_referrals(store, terminal, member, referral):
    # given four referees, one of whom never buys
    referees = [_referee(store, member) for _ in range(5)]
    # when four buy, one after the other
    for n, referee in enumerate(referees[:4]):
        buy(
            store=store, terminal=terminal, member=referee, receipt_no=f"R-{n}", amount="100", at=T + timedelta(hours=n)
        )
    # then: 100 per referee, 200 once at the third
    assert entries_of(member) == [
        ("bonus", 100, 100, "campaign"),
        ("bonus", 100, 200, "campaign"),
        ("bonus", 100, 300, "campaign"),
        ("bonus", 200, 500, "campaign"),
        ("bonus", 100, 600, "campaign"),
    ]
    assert [g[1:3] for g in grants_of(referral)] == [
        (f"referee:{referees[0].pk}", 100),
        (f"referee:{referees[1].pk}", 100),
        (f"referee:{referees[2].pk}", 100),
        ("threshold:3", 200),
        (f"referee:{referees[3].pk}", 100),
    ]
    assert spent(referral) == (600, 0)
    _ledger_ok()


def test_no_referral_reward_while_the_referrer_is_frozen_and_none_later(store, terminal, member, referral):
    # given a referee whose referrer is frozen when the referee first buys
    referee = _referee(store, member)
    member_freeze(member=member, by_user=None, reason="风控")
    buy(store=store, terminal=terminal, member=referee, receipt_no="R-1", amount="100", at=T)
    # when the referrer is unfrozen and the referee buys again
    member_unfreeze(member=member, by_user=None, reason="解除")
    buy(store=store, terminal=terminal, member=referee, receipt_no="R-2", amount="100", at=T + timedelta(days=1))
    # then
    assert entries_of(member) == []
    assert grants_of(referral) == []
    _ledger_ok()


def test_referral_reward_is_paid_even_when_the_referee_first_buys_at_the_referrers_till(
    store, terminal, member, referral
):
    # given a referee enrolled through the till API flow (services) and a
    # first-purchase bonus for the referee as well
    first_bonus = _bonus(condition=Campaign.Condition.FIRST_PURCHASE, points=30)
    referee = _referee(store, member)
    # when
    result = buy(store=store, terminal=terminal, member=referee, receipt_no="R-1", amount="100", at=T)
    # then both are rewarded, each once
    assert result.balance == 130
    assert account_of(member) == (100, 0, 0)
    assert grants_of(first_bonus) == [(referee.pk, "first_purchase", 30, False)]
    assert grants_of(referral) == [(member.pk, f"referee:{referee.pk}", 100, False)]
    _ledger_ok()


def test_referral_limited_to_a_store_counts_first_purchases_made_there(store, other_store, terminal, member):
    # given a referral reward for first purchases at SH001
    campaign = CampaignFactory(kind=Kind.REFERRAL, multiplier=1, points=100, stores=[store])
    here, elsewhere = _referee(store, member), _referee(store, member)
    # when
    buy(store=store, terminal=terminal, member=here, receipt_no="R-1", amount="100", at=T)
    buy(store=other_store, terminal=None, member=elsewhere, receipt_no="R-1", amount="100", at=T)
    buy(store=store, terminal=terminal, member=elsewhere, receipt_no="R-2", amount="100", at=T + timedelta(days=1))
    # then
    assert grants_of(campaign) == [(member.pk, f"referee:{here.pk}", 100, False)]
    assert account_of(member) == (100, 0, 0)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Reactivation waves (relative to the real clock: a wave follows the member's
# entry into the campaign by ``after_days``)
# -----------------------------------------------------------------------------
def test_reactivation_waves_stop_as_soon_as_the_member_buys(store, terminal):
    # given three waves: a coupon now, a better coupon after 7 days, a message after 14
    now = timezone.now()
    first_offer = BenefitFactory(name="想你了 满100减10")
    second_offer = BenefitFactory(name="回来吧 满100减30")
    campaign = CampaignFactory(
        kind=Kind.REACTIVATION,
        multiplier=1,
        starts_at=now - timedelta(days=1),
        waves=[
            {"after_days": 0, "benefit": first_offer.pk, "message": "好久不见"},
            {"after_days": 7, "benefit": second_offer.pk, "message": "再送您一张券"},
            {"after_days": 14, "benefit": None, "message": "最后一次提醒"},
        ],
    )
    # a sleeping member who last bought 100 days ago, one who will buy, one
    # whose purchase the nightly job records, and an active member
    stays = _sleeping(MemberFactory(store=store))
    buy(store=store, terminal=terminal, member=stays, receipt_no="OLD-1", amount="50", at=now - timedelta(days=100))
    buyer = _sleeping(MemberFactory(store=store))
    recorded = _sleeping(MemberFactory(store=store))
    active = MemberFactory(store=store)
    Member.objects.filter(pk=active.pk).update(lifecycle_stage=Member.Lifecycle.ACTIVE)
    # when the campaign runs daily for three weeks; the buyer buys on day 2 and
    # the nightly job records a purchase of the third on day 3
    made = {}
    for day in range(22):
        at = now + timedelta(days=day, minutes=5)
        if day == 2:
            buy(store=store, terminal=terminal, member=buyer, receipt_no="R-1", amount="100", at=at)
        if day == 3:
            Member.objects.filter(pk=recorded.pk).update(last_purchase_at=at - timedelta(minutes=1))
        made[day] = campaign_run(campaign=campaign, at=at)
    # then
    assert {day: n for day, n in made.items() if n} == {0: 3, 7: 1, 14: 1}
    assert sorted((g[0], g[1], g[3]) for g in grants_of(campaign)) == sorted(
        [
            (stays.pk, "wave:0", True),
            (buyer.pk, "wave:0", True),
            (recorded.pk, "wave:0", True),
            (stays.pk, "wave:1", True),
            (stays.pk, "wave:2", False),
        ]
    )
    assert [name for name, _, _ in _coupons_of(stays)] == ["想你了 满100减10", "回来吧 满100减30"]
    assert [name for name, _, _ in _coupons_of(buyer)] == ["想你了 满100减10"]
    assert _coupons_of(active) == []
    messages = OutboxMessage.objects.filter(kind=OutboxMessage.Kind.CAMPAIGN)
    assert sorted(messages.values_list("member_id", "payload__wave")) == sorted(
        [(stays.pk, 0), (buyer.pk, 0), (recorded.pk, 0), (stays.pk, 1), (stays.pk, 2)]
    )
    assert spent(campaign) == (0, 4)


def test_no_first_wave_for_a_member_who_bought_since_the_nightly_stage(store, terminal):
    # given a member still marked sleeping who bought this morning (the
    # nightly job has not run since), and one who last bought 100 days ago
    now = timezone.now()
    campaign = CampaignFactory(
        kind=Kind.REACTIVATION,
        multiplier=1,
        starts_at=now - timedelta(days=1),
        waves=[{"after_days": 0, "benefit": BenefitFactory().pk, "message": "好久不见"}],
    )
    back = _sleeping(MemberFactory(store=store))
    buy(store=store, terminal=terminal, member=back, receipt_no="R-1", amount="100", at=now - timedelta(hours=2))
    away = _sleeping(MemberFactory(store=store))
    buy(store=store, terminal=terminal, member=away, receipt_no="R-2", amount="100", at=now - timedelta(days=100))
    forecast = campaign_dry_run(campaign=campaign, now=now)
    # when
    made = campaign_run(campaign=campaign, at=now)
    # then
    assert made == 1
    assert [g[0] for g in grants_of(campaign)] == [away.pk]
    assert (forecast.members, forecast.coupons) == (1, 1)


# -----------------------------------------------------------------------------
# Scheduled runs: nothing issued twice
# -----------------------------------------------------------------------------
def _scheduled_world(store: Store, now: datetime) -> list[Campaign]:
    """A coupon grant to everyone, a birthday campaign with a member born this
    month, and a reactivation campaign with a sleeping member."""
    MemberFactory(store=store, birthday=date(1990, timezone.localtime(now).month, 1))
    _sleeping(MemberFactory(store=store))
    MemberFactory(store=store)
    starts = now - timedelta(days=1)
    return [
        CampaignFactory(kind=Kind.COUPON_GRANT, benefit=BenefitFactory(), multiplier=1, starts_at=starts),
        CampaignFactory(kind=Kind.BIRTHDAY, benefit=BenefitFactory(), starts_at=starts),
        CampaignFactory(
            kind=Kind.REACTIVATION,
            multiplier=1,
            starts_at=starts,
            waves=[{"after_days": 0, "benefit": BenefitFactory().pk, "message": "好久不见"}],
        ),
    ]


def test_scheduled_run_twice_issues_nothing_twice(store):
    # given
    now = timezone.now()
    grant, birthday, reactivation = _scheduled_world(store, now)
    # when
    first = campaigns_run_scheduled(at=now)
    counts = _counts()
    second = campaigns_run_scheduled(at=now + timedelta(hours=1))
    # then: 3 members get the grant, 1 a birthday gift, 1 wave 0
    assert (first, second) == (5, 0)
    assert _counts() == counts
    assert counts["coupons"] == counts["grants"] == 5
    assert [spent(c) for c in (grant, birthday, reactivation)] == [(0, 3), (0, 1), (0, 1)]


def _issued() -> dict[str, Any]:
    """Everything a scheduled task could issue."""
    from campaigns.models import CouponIssueRequest

    return {
        **_counts(),
        "issue_requests": CouponIssueRequest.objects.count(),
        "ledger": ledger_snapshot(),
        "coupon_rows": coupon_snapshot(),
        "spent": list(Campaign.objects.order_by("pk").values_list("pk", "spent_points", "spent_coupons")),
        "segmentation": list(Member.objects.order_by("pk").values_list("pk", "lifecycle_stage", "rfm_group")),
    }


def test_every_beat_task_run_twice_in_a_row_issues_nothing_the_second_time(store, terminal):
    # given campaigns of every scheduled kind, points past their expiry, a gold
    # member with a monthly privilege, and a member past the welcome period
    # who never bought (sleeping for the nightly segments job)
    from loyalty.celery import app
    from tests.points.factories import points_give

    app.loader.import_default_modules()
    now = timezone.now()
    _scheduled_world(store, now)
    old = MemberFactory(store=store)
    Member.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=40))
    gold = _gold(store)
    BenefitFactory(name="金卡月度礼", granted_by_tiers=["gold"], points_price=0)
    buy(store=store, terminal=terminal, member=gold, receipt_no="R-1", amount="100", at=now - timedelta(days=1))
    points_give(old, 30, at=now - timedelta(days=400), expires_at=now - timedelta(days=1))
    tasks = [entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    assert "campaigns.run_scheduled" in tasks
    first_pass: dict[str, bool] = {}
    second_pass: dict[str, bool] = {}
    # when each task of the schedule runs, and at once runs again
    for name in tasks:
        before = _issued()
        app.tasks[name].apply(throw=True)
        after_first = _issued()
        app.tasks[name].apply(throw=True)
        first_pass[name] = after_first != before
        second_pass[name] = _issued() != after_first
    # then the first runs did their work, no second run issued anything
    assert {name for name, changed in first_pass.items() if changed} >= {
        "points.expire_due",
        "campaigns.run_scheduled",
        "campaigns.tier_privileges_monthly",
        "campaigns.compute_segments",
    }
    assert second_pass == dict.fromkeys(tasks, False)
    _ledger_ok()


# -----------------------------------------------------------------------------
# Results
# -----------------------------------------------------------------------------
def test_results_of_a_coupon_grant(store, terminal):
    # given a coupon grant to three members from 1 March
    reached = [MemberFactory(store=store) for _ in range(3)]
    campaign = CampaignFactory(
        kind=Kind.COUPON_GRANT, benefit=BenefitFactory(value=Decimal("10")), multiplier=1, starts_at=local(2026, 3, 1)
    )
    buy(store=store, terminal=terminal, member=reached[2], receipt_no="R-0", amount="500", at=local(2026, 2, 27))
    campaign_run(campaign=campaign, at=local(2026, 3, 1, 9))
    outsider = MemberFactory(store=store)
    # when the first writes a coupon off on a ¥200 purchase, the second buys
    # ¥80 and returns ¥30, the third buys nothing since, an outsider buys ¥1000
    at = local(2026, 3, 5, 12)
    coupon = Coupon.objects.get(member=reached[0])
    purchase_record(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        amount=Decimal("200"),
        paid_at=at,
        now=at,
        identified=by_code(reached[0], at),
        coupon_codes=[coupon.code],
    )
    buy(store=store, terminal=terminal, member=reached[1], receipt_no="R-2", amount="80", at=at)
    purchase_refund(store=store, terminal=terminal, receipt_no="R-2", refund_no="F-2", amount=Decimal("30"), at=at)
    buy(store=store, terminal=terminal, member=outsider, receipt_no="R-3", amount="1000", at=at)
    # then
    assert campaign_results(campaign=campaign) == {
        "members_reached": 3,
        "points_issued": 0,
        "coupons_issued": 3,
        "coupons_written_off": 1,
        "sales_of_reached_members": Decimal("250.00"),  # 200 + (80 - 30); before the start and outsiders not
    }
    _ledger_ok()


def test_results_of_a_multiplier(store, terminal, member):
    # given double points from 1 March, and a member who bought before
    campaign = CampaignFactory(starts_at=local(2026, 3, 1))
    other = MemberFactory(store=store)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-0", amount="300", at=local(2026, 2, 28))
    # when
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=T)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="50.50", at=T)
    buy(store=store, terminal=terminal, member=other, receipt_no="R-3", amount="20", at=T)
    # then
    assert campaign_results(campaign=campaign) == {
        "members_reached": 2,
        "points_issued": 100 + 51 + 20,  # ¥50.50: 101 - 50
        "coupons_issued": 0,
        "coupons_written_off": 0,
        "sales_of_reached_members": Decimal("170.50"),
    }
    _ledger_ok()


# -----------------------------------------------------------------------------
# Dry run: the forecast equals what the campaign then really issues
# -----------------------------------------------------------------------------
NOW = local(2026, 3, 29, 12, 0)  # a Sunday; the last 4 weeks start on 1 March at noon
SINCE = NOW - timedelta(weeks=4)


def _members(store: Store, tiers: list[str]) -> list[Member]:
    return [member_in_tier(MemberFactory(store=store), tier, since=SINCE - timedelta(days=60)) for tier in tiers]


def _replay(script: list[tuple[int, str, datetime, str, int]], members: list[Member], stores: dict[str, Store]) -> None:
    """Record the script's purchases (member index, store, paid at, amount, points used) for ``members``."""
    for n, (index, store_code, at, amount, points_to_use) in enumerate(script):
        buy(
            store=stores[store_code],
            terminal=None,
            member=members[index],
            receipt_no=f"{members[0].pk}-{n}",
            amount=amount,
            at=at,
            points_to_use=points_to_use,
        )


def test_multiplier_forecast_equals_what_it_then_issues_on_the_same_purchases(store, other_store):
    # given a weekend double-points draft at SH001, at most 3 boosted purchases
    # per member, a budget of 500 extra points
    campaign = CampaignFactory(
        status=Campaign.Status.DRAFT,
        weekdays=[6, 7],
        stores=[store],
        per_member_limit=3,
        budget_points=500,
        starts_at=SINCE,
    )
    stores = {"SH": store, "BJ": other_store}
    script = [
        (0, "SH", SINCE - timedelta(days=1), "500", 0),  # before the 4 weeks (a Saturday)
        (0, "SH", local(2026, 3, 7, 10), "100", 0),  # Sat: +100
        (1, "SH", local(2026, 3, 7, 11), "80", 0),  # Sat, gold: 100 → 200, +100
        (0, "SH", local(2026, 3, 8, 10), "55.50", 0),  # Sun: 55 → 111, +56
        (1, "BJ", local(2026, 3, 8, 11), "100", 0),  # another store
        (0, "SH", local(2026, 3, 9, 10), "100", 0),  # Monday
        (0, "SH", local(2026, 3, 14, 10), "100", 0),  # Sat: +100, the member's third
        (0, "SH", local(2026, 3, 21, 10), "100", 0),  # over the member's limit
        (1, "SH", local(2026, 3, 21, 11), "100", 100),  # ¥99 after points: 123 → 247, +124
        (2, "SH", local(2026, 3, 28, 10), "300", 0),  # +300 would exceed the budget
        (3, "SH", local(2026, 3, 29, 10), "20", 0),  # +20: the budget exactly
        (3, "SH", local(2026, 3, 29, 11), "20", 0),  # budget spent
    ]
    _replay(script, _members(store, ["silver", "gold", "silver", "silver"]), stores)
    # when
    forecast = campaign_dry_run(campaign=campaign, weeks=4, now=NOW)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.ACTIVE)
    _replay(script, _members(store, ["silver", "gold", "silver", "silver"]), stores)
    # then
    assert (forecast.purchases, forecast.members, forecast.points, forecast.coupons) == (6, 3, 500, 0)
    results = campaign_results(campaign=campaign)
    assert (results["members_reached"], results["points_issued"], results["coupons_issued"]) == (3, 500, 0)
    assert CampaignGrant.objects.filter(campaign=campaign).count() == forecast.purchases
    assert spent(campaign) == (forecast.points, 0)
    _ledger_ok()


def test_first_purchase_bonus_forecast_equals_what_it_then_issues(store, other_store):
    # given 50 points on a first purchase at SH001 (a draft)
    campaign = _bonus(
        condition=Campaign.Condition.FIRST_PURCHASE,
        points=50,
        stores=[store],
        budget_points=1000,
        status=Campaign.Status.DRAFT,
        starts_at=SINCE,
    )
    stores = {"SH": store, "BJ": other_store}
    script = [
        (0, "SH", SINCE - timedelta(days=3), "100", 0),  # bought before the 4 weeks
        (0, "SH", local(2026, 3, 5, 10), "100", 0),  # not a first purchase
        (1, "BJ", local(2026, 3, 6, 10), "100", 0),  # first purchase, another store
        (1, "SH", local(2026, 3, 7, 10), "100", 0),  # second purchase
        (2, "SH", local(2026, 3, 8, 10), "100", 0),  # +50
        (2, "SH", local(2026, 3, 9, 10), "100", 0),
        (3, "SH", local(2026, 3, 10, 10), "10", 0),  # +50
        (4, "SH", local(2026, 3, 28, 10), "10", 0),  # +50
    ]
    _replay(script, _members(store, ["silver"] * 6), stores)
    # when
    forecast = campaign_dry_run(campaign=campaign, weeks=4, now=NOW)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.ACTIVE)
    _replay(script, _members(store, ["silver"] * 6), stores)
    # then
    assert (forecast.purchases, forecast.members, forecast.points, forecast.coupons) == (3, 3, 150, 0)
    results = campaign_results(campaign=campaign)
    assert (results["members_reached"], results["points_issued"]) == (3, 150)
    assert spent(campaign) == (150, 0)
    _ledger_ok()


def test_coupon_grant_forecast_equals_the_members_it_then_reaches(store, gold_segment):
    # given five members in the segment, a budget of four coupons (a draft)
    for _ in range(5):
        _gold(store)
    _gold(store, consent=False)
    campaign = CampaignFactory(
        kind=Kind.COUPON_GRANT,
        segment=gold_segment,
        benefit=BenefitFactory(),
        multiplier=1,
        budget_coupons=4,
        status=Campaign.Status.DRAFT,
    )
    # when
    forecast = campaign_dry_run(campaign=campaign, now=T)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.ACTIVE)
    campaign.refresh_from_db()
    made = campaign_run(campaign=campaign, at=T)
    after = campaign_dry_run(campaign=campaign, now=T)
    # then
    assert (forecast.members, forecast.coupons, forecast.points) == (4, 4, 0)
    assert made == 4
    results = campaign_results(campaign=campaign)
    assert (results["members_reached"], results["coupons_issued"]) == (forecast.members, forecast.coupons)
    # once run, nothing is left to issue
    assert (after.members, after.coupons) == (0, 0)


def test_dry_run_writes_nothing(store, terminal, member):
    # given purchases and a draft multiplier
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=local(2026, 3, 28, 10))
    campaign = CampaignFactory(status=Campaign.Status.DRAFT, weekdays=[6], budget_points=50)
    snapshot = (ledger_snapshot(), coupon_snapshot(), list(CampaignGrant.objects.values_list("pk")))
    # when
    forecast = campaign_dry_run(campaign=campaign, weeks=4, now=NOW)
    # then: the purchase would take 100 of a budget of 50
    assert (forecast.purchases, forecast.members, forecast.points) == (0, 0, 0)
    assert (ledger_snapshot(), coupon_snapshot(), list(CampaignGrant.objects.values_list("pk"))) == snapshot
    assert spent(campaign) == (0, 0)


def test_birthday_forecast_counts_gifts_and_boosted_purchases(store, terminal):
    # given a member born in March who bought in March, one born in April
    march = MemberFactory(store=store, birthday=date(1990, 3, 15))
    MemberFactory(store=store, birthday=date(1990, 4, 15))
    buy(store=store, terminal=terminal, member=march, receipt_no="R-1", amount="100", at=local(2026, 3, 20, 10))
    campaign = CampaignFactory(kind=Kind.BIRTHDAY, benefit=BenefitFactory(), status=Campaign.Status.DRAFT)
    # when
    forecast = campaign_dry_run(campaign=campaign, weeks=4, now=NOW)
    # then
    assert (forecast.purchases, forecast.members, forecast.points, forecast.coupons) == (1, 1, 100, 1)


def test_reactivation_forecast_counts_the_sleeping_members_of_the_first_wave(store):
    # given two sleeping members and one active
    _sleeping(MemberFactory(store=store))
    _sleeping(MemberFactory(store=store))
    MemberFactory(store=store)
    with_coupon = CampaignFactory(
        kind=Kind.REACTIVATION,
        multiplier=1,
        status=Campaign.Status.DRAFT,
        waves=[{"after_days": 7, "message": "再见"}, {"after_days": 0, "benefit": BenefitFactory().pk}],
    )
    message_only = CampaignFactory(
        kind=Kind.REACTIVATION, multiplier=1, status=Campaign.Status.DRAFT, waves=[{"after_days": 0, "message": "嗨"}]
    )
    # when
    forecasts = [campaign_dry_run(campaign=c, now=T) for c in (with_coupon, message_only)]
    # then
    assert [(f.members, f.coupons) for f in forecasts] == [(2, 2), (2, 0)]


def test_forecast_of_a_segment_campaign_counts_its_members_in_a_constant_number_of_queries(store, gold_segment):
    # given double points for the gold segment; a gold member who accepts
    # marketing and a silver one both buy
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    campaign = CampaignFactory(status=Campaign.Status.DRAFT, segment=gold_segment)
    inside, outside = _gold(store), MemberFactory(store=store, marketing_consent=True)
    now = local(2026, 4, 5, 12)  # the last 4 weeks: 8 March noon to 5 April noon

    def forecast_queries() -> tuple[Any, int]:
        with CaptureQueriesContext(connection) as queries:
            forecast = campaign_dry_run(campaign=campaign, weeks=4, now=now)
        return forecast, len(queries)

    for n, who in enumerate([inside, outside]):
        buy(store=store, terminal=None, member=who, receipt_no=f"A-{n}", amount="100", at=local(2026, 3, 14, 10 + n))
    small, small_queries = forecast_queries()
    # when there are four times as many purchases, over two months
    for n in range(6):
        at = local(2026, 3, 21, 10 + n) if n < 3 else local(2026, 4, 4, 10 + n)
        buy(store=store, terminal=None, member=[inside, outside][n % 2], receipt_no=f"B-{n}", amount="100", at=at)
    large, large_queries = forecast_queries()
    # then: gold earns x1.25, so 125 extra points per purchase of the member inside
    assert (small.purchases, small.members, small.points) == (1, 1, 125)
    assert (large.purchases, large.members, large.points) == (4, 1, 500)
    # one more month of segment membership (segment_members: 4 queries), none per purchase
    assert large_queries == small_queries + 4
