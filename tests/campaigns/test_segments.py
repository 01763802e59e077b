"""Segments: the nightly lifecycle / RFM job, segment criteria, member tags
(service, CSV import, command) and the segment and tag admin."""

from __future__ import annotations

import io
from datetime import date, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Segment
from campaigns.services.segments import (
    RFM_GROUPS,
    member_tags_import_csv,
    member_tags_remove,
    member_tags_set,
    segment_members,
    segment_sample,
    segment_size,
    segments_compute,
    segments_last_run,
)
from campaigns.tasks import compute_segments_task
from loyalty.celery import app as celery_app
from loyalty.roles import MARKETING, OPERATOR
from members.models import Member, MemberEvent, MemberTag, Store, Tier
from members.services import member_close, member_freeze
from points.models import Purchase
from points.services import purchase_refund
from tests.points.factories import MemberFactory, local

pytestmark = pytest.mark.django_db

# The nightly run: 00:40 Shanghai time on 30 June 2026.
AS_OF = local(2026, 6, 30, 0, 40)
_receipts = count(1)

G = Member.RfmGroup


# -----------------------------------------------------------------------------
# Helpers
# -----------------------------------------------------------------------------
def _member(store: Store, *, registered_days_ago: int = 400, **fields: Any) -> Member:
    """A member enrolled ``registered_days_ago`` days before AS_OF (same local time of day)."""
    member = MemberFactory(store=store)
    updates = {"created_at": AS_OF - timedelta(days=registered_days_ago), **fields}
    Member.objects.filter(pk=member.pk).update(**updates)
    member.refresh_from_db()
    return member


def _purchase(
    member: Member, store: Store, *, days_ago: int | float, amount: str = "100.00", refunded: str = "0.00"
) -> Purchase:
    """A purchase row paid ``days_ago`` days before AS_OF (segments only read purchases)."""
    return Purchase.objects.create(
        store=store,
        receipt_no=f"SEG-{next(_receipts)}",
        member=member,
        tier=member.tier,
        amount=Decimal(amount),
        refunded_amount=Decimal(refunded),
        paid_at=AS_OF - timedelta(days=days_ago),
    )


def _segmentation(member: Member) -> tuple[Any, ...]:
    """(last_purchase_at, stage, R, F, M, group) as stored."""
    return Member.objects.values_list(
        "last_purchase_at", "lifecycle_stage", "rfm_recency", "rfm_frequency", "rfm_monetary", "rfm_group"
    ).get(pk=member.pk)


def _stage(member: Member) -> str:
    return Member.objects.values_list("lifecycle_stage", flat=True).get(pk=member.pk)


def _scores(member: Member) -> tuple[int, int, int]:
    return Member.objects.values_list("rfm_recency", "rfm_frequency", "rfm_monetary").get(pk=member.pk)


def _group(member: Member) -> str:
    return Member.objects.values_list("rfm_group", flat=True).get(pk=member.pk)


def _segment(**fields: Any) -> Segment:
    m2m = {name: fields.pop(name) for name in ("tiers", "stores", "tags") if name in fields}
    segment = Segment.objects.create(name=fields.pop("name", "测试分群"), **fields)
    for name, values in m2m.items():
        getattr(segment, name).set(values)
    return segment


def _ids(queryset: Any) -> set[int]:
    return set(queryset.values_list("pk", flat=True))


def _links() -> set[tuple[str, str]]:
    return set(Member.tags.through.objects.values_list("member__member_no", "membertag__name"))


def _csv(text: str, encoding: str = "utf-8") -> io.BytesIO:
    return io.BytesIO(text.encode(encoding))


# -----------------------------------------------------------------------------
# Lifecycle stages
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("registered_days_ago", "stage"),
    [(0, "new"), (29, "new"), (30, "new"), (31, "sleeping"), (179, "sleeping"), (180, "churned"), (400, "churned")],
)
def test_a_member_who_never_bought_is_new_then_sleeping_then_churned(store, registered_days_ago, stage):
    # given a member registered that many days ago, who never bought
    member = _member(store, registered_days_ago=registered_days_ago)
    # when
    segments_compute(as_of=AS_OF)
    # then: new ≤ 30 days; past the welcome period without a purchase: sleeping, churned from 180 days
    assert _stage(member) == stage
    assert _segmentation(member)[0] is None


@pytest.mark.parametrize(
    ("last_purchase_days_ago", "stage"),
    [(0, "active"), (89, "active"), (90, "sleeping"), (91, "sleeping"), (179, "sleeping"), (180, "churned")],
)
def test_lifecycle_follows_the_days_since_the_last_purchase(store, last_purchase_days_ago, stage):
    # given a member registered long ago whose last purchase was that many days ago
    member = _member(store, registered_days_ago=400)
    _purchase(member, store, days_ago=last_purchase_days_ago + 30)
    last = _purchase(member, store, days_ago=last_purchase_days_ago)
    # when
    segments_compute(as_of=AS_OF)
    # then: sleeping ≥ 90 days, churned ≥ 180 days
    assert _stage(member) == stage
    assert _segmentation(member)[0] == last.paid_at


@pytest.mark.parametrize(("registered_days_ago", "stage"), [(30, "new"), (31, "churned")])
def test_new_wins_over_purchases_for_the_first_30_days(store, registered_days_ago, stage):
    # given a member whose only purchase (an imported history) is 200 days old
    member = _member(store, registered_days_ago=registered_days_ago)
    _purchase(member, store, days_ago=200)
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert _stage(member) == stage


def test_days_are_local_calendar_days_not_hours(store):
    # given purchases late on the evening 90 and 89 local days before the 00:40 run
    sleeping = _member(store)
    active = _member(store)
    Purchase.objects.create(
        store=store, receipt_no="LATE-90", member=sleeping, amount=Decimal("10.00"), paid_at=local(2026, 4, 1, 23, 30)
    )
    Purchase.objects.create(
        store=store, receipt_no="LATE-89", member=active, amount=Decimal("10.00"), paid_at=local(2026, 4, 2, 23, 30)
    )
    assert (date(2026, 6, 30) - date(2026, 4, 1)).days == 90
    # when: 89 days and 1 hour 10 minutes after the first purchase
    segments_compute(as_of=AS_OF)
    # then: the calendar day counts
    assert _stage(sleeping) == "sleeping"
    assert _stage(active) == "active"


def test_thresholds_come_from_settings(settings, store):
    # given shorter thresholds
    settings.LOYALTY_LIFECYCLE_NEW_DAYS = 7
    settings.LOYALTY_LIFECYCLE_SLEEPING_DAYS = 30
    settings.LOYALTY_LIFECYCLE_CHURNED_DAYS = 60
    newcomer = _member(store, registered_days_ago=7)
    sleeping = _member(store)
    _purchase(sleeping, store, days_ago=30)
    churned = _member(store)
    _purchase(churned, store, days_ago=60)
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert [_stage(newcomer), _stage(sleeping), _stage(churned)] == ["new", "sleeping", "churned"]


def test_fully_refunded_purchases_do_not_count(store, terminal):
    # given a purchase 100 days ago, and one 10 days ago refunded in full through the till
    member = _member(store)
    older = _purchase(member, store, days_ago=100, amount="300.00")
    recent = _purchase(member, store, days_ago=10, amount="200.00")
    purchase_refund(
        store=store, terminal=terminal, receipt_no=recent.receipt_no, refund_no="RF-1", amount=Decimal("200.00")
    )
    assert Purchase.objects.get(pk=recent.pk).refunded_amount == Decimal("200.00")
    # and a member whose only purchase is partly refunded
    partly = _member(store)
    kept = _purchase(partly, store, days_ago=10, amount="200.00", refunded="150.00")
    # when
    segments_compute(as_of=AS_OF)
    # then the refunded purchase is ignored: the last purchase is 100 days old, so the member sleeps
    assert _segmentation(member)[:2] == (older.paid_at, "sleeping")
    assert _segmentation(partly)[:2] == (kept.paid_at, "active")


def test_purchases_after_as_of_are_ignored(store):
    # given a purchase made after the time the job computes for
    member = _member(store)
    _purchase(member, store, days_ago=-1)
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert _segmentation(member) == (None, "churned", 0, 0, 0, "")


# -----------------------------------------------------------------------------
# RFM
# -----------------------------------------------------------------------------
def test_monetary_scores_are_quintiles_of_net_spend(store):
    # given 10 members bought once on the same day, spending 100, 200 … 1000 net (one refund included)
    members = []
    for index in range(10):
        member = _member(store)
        spend = Decimal(100 * (index + 1))
        _purchase(member, store, days_ago=5, amount=str(spend + 50), refunded="50.00")
        members.append(member)
    # when
    result = segments_compute(as_of=AS_OF)
    # then: two members per quintile; equal recency and frequency give everyone the same R and F
    assert result.scored == 10
    assert [_scores(member)[2] for member in members] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {_scores(member)[:2] for member in members} == {(1, 1)}


def test_recency_scores_are_quintiles_more_recent_higher(store):
    # given 10 members whose last purchases are 10, 20 … 100 days ago
    members = []
    for index in range(10):
        member = _member(store)
        _purchase(member, store, days_ago=10 * (index + 1))
        members.append(member)
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert [_scores(member)[0] for member in members] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_frequency_ties_share_the_lowest_quintile_they_span(store):
    # given 5 one-time buyers, 3 buying twice and 2 buying five times
    counts = [1] * 5 + [2] * 3 + [5] * 2
    members = []
    for purchases in counts:
        member = _member(store)
        for day in range(purchases):
            _purchase(member, store, days_ago=10 + day)
        members.append(member)
    # when
    segments_compute(as_of=AS_OF)
    # then: positions 1–5 span quintiles 1–3 → 1; positions 6–8 span 3–4 → 3; positions 9–10 → 5
    assert [_scores(member)[1] for member in members] == [1] * 5 + [3] * 3 + [5] * 2


def test_rfm_counts_only_the_last_12_months_and_members_without_get_no_group(settings, store):
    # given one purchase 11 months ago, one 13 months ago (churned), and a member who never bought
    settings.LOYALTY_RFM_MONTHS = 12
    recent = _member(store)
    _purchase(recent, store, days_ago=335)
    old = _member(store)
    _purchase(old, store, days_ago=13 * 31)
    never = _member(store)
    # when
    result = segments_compute(as_of=AS_OF)
    # then only the 11-month-old purchase is scored
    assert result.scored == 1
    assert _scores(recent) == (1, 1, 1)
    assert _group(recent) == G.GENERAL_RECALL
    assert _segmentation(old)[1:] == ("churned", 0, 0, 0, "")
    assert _segmentation(never)[1:] == ("churned", 0, 0, 0, "")


def test_the_eight_groups_compare_each_score_with_the_average(store):
    # given 8 members, one for each combination of recent / old, frequent / rare, big / small spender
    members = {}
    for r_high, f_high, m_high in RFM_GROUPS:
        member = _member(store)
        days = 10 if r_high else 60
        purchases = 3 if f_high else 1
        total = Decimal("3000.00") if m_high else Decimal("300.00")
        for day in range(purchases):
            _purchase(member, store, days_ago=days + day, amount=str(total / purchases))
        members[(r_high, f_high, m_high)] = member
    # when
    segments_compute(as_of=AS_OF)
    # then: 4 low members span quintiles 1–2 (→ 1), 4 high ones 3–5 (→ 3); the average is 2
    for flags, member in members.items():
        r, f, m = (3 if high else 1 for high in flags)
        assert _scores(member) == (r, f, m), flags
        assert _group(member) == RFM_GROUPS[flags], flags
    assert {_group(member) for member in members.values()} == set(G.values)
    assert _stage(members[(False, False, False)]) == "active"


def test_one_buyer_alone_is_in_no_high_group(store):
    # given a single buyer: every score equals the average
    member = _member(store)
    _purchase(member, store, days_ago=3, amount="9999.00")
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert _scores(member) == (1, 1, 1)
    assert _group(member) == G.GENERAL_RECALL


# -----------------------------------------------------------------------------
# Writes: only changes, in batches, closed members skipped
# -----------------------------------------------------------------------------
def test_a_rerun_writes_nothing_and_a_change_writes_one_row(store):
    # given 7 members, some buying, some not, computed once in batches of 3
    members = [_member(store, registered_days_ago=days) for days in (5, 40, 100, 200, 300, 400, 500)]
    for index, member in enumerate(members[2:], start=1):
        _purchase(member, store, days_ago=index * 20, amount=str(100 * index))
    first = segments_compute(as_of=AS_OF, batch_size=3)
    assert first.updated == 6  # the 5-day-old member is already "new" with no scores
    stamped = dict(Member.objects.values_list("pk", "segments_updated_at"))
    before = [_segmentation(member) for member in members]
    # when run again
    again = segments_compute(as_of=AS_OF, batch_size=3)
    # then nothing is written
    assert again.updated == 0
    assert again.batches == first.batches >= 3
    assert [_segmentation(member) for member in members] == before
    assert dict(Member.objects.values_list("pk", "segments_updated_at")) == stamped
    # when one member buys
    _purchase(members[1], store, days_ago=1, amount="50.00")
    third = segments_compute(as_of=AS_OF, batch_size=3)
    # then only rows whose values changed are written (the buyer, and members whose quintiles moved)
    assert third.updated >= 1
    assert _segmentation(members[1])[1] == "active"
    assert segments_compute(as_of=AS_OF, batch_size=3).updated == 0


def test_the_same_population_gives_the_same_result_whatever_the_batch_size(store):
    # given
    members = [_member(store, registered_days_ago=100 + day) for day in range(9)]
    for index, member in enumerate(members):
        _purchase(member, store, days_ago=index * 7, amount=str(50 * (index + 1)))
    segments_compute(as_of=AS_OF, batch_size=1)
    one_by_one = [_segmentation(member) for member in members]
    Member.objects.update(rfm_recency=0, rfm_frequency=0, rfm_monetary=0, rfm_group="", lifecycle_stage="new")
    # when
    segments_compute(as_of=AS_OF, batch_size=1000)
    # then
    assert [_segmentation(member) for member in members] == one_by_one


def test_closed_members_are_skipped_and_left_out_of_the_quintiles(store):
    # given a closed member who bought, and two active buyers
    closed = _member(store)
    _purchase(closed, store, days_ago=5, amount="5000.00")
    member_close(member=closed, by_user=None, reason="会员要求注销")
    small = _member(store)
    _purchase(small, store, days_ago=5, amount="100.00")
    big = _member(store)
    _purchase(big, store, days_ago=5, amount="200.00")
    before = _segmentation(closed)
    # when
    result = segments_compute(as_of=AS_OF)
    # then the closed member's row is untouched and not scored
    assert _segmentation(closed) == before == (None, "new", 0, 0, 0, "")
    assert result.scored == 2
    assert [_scores(small)[2], _scores(big)[2]] == [1, 2]


def test_frozen_members_are_computed(store):
    # given
    member = _member(store)
    _purchase(member, store, days_ago=100)
    member_freeze(member=member, by_user=None, reason="风控核查")
    # when
    segments_compute(as_of=AS_OF)
    # then
    assert _stage(member) == "sleeping"


def test_the_run_is_recorded_and_leaves_no_temporary_table(store):
    # given
    member = _member(store)
    _purchase(member, store, days_ago=5)
    # when
    result = segments_compute(as_of=AS_OF)
    # then
    run = segments_last_run()
    assert run is not None
    assert run.detail["updated"] == result.updated == 1
    assert run.detail["scored"] == 1
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pg_temp.segments_rfm_scores')")
        assert cursor.fetchone() == (None,)


# -----------------------------------------------------------------------------
# Task, schedule, command
# -----------------------------------------------------------------------------
def test_the_task_is_scheduled_at_00_40_and_changes_nothing_the_second_time(store):
    # given
    entry = settings.CELERY_BEAT_SCHEDULE["segments-compute"]
    assert entry["task"] == "campaigns.compute_segments"
    assert entry["schedule"] == crontab(hour=0, minute=40)
    assert "campaigns.compute_segments" in celery_app.tasks
    member = _member(store)
    Member.objects.filter(pk=member.pk).update(created_at=timezone.now() - timedelta(days=60))
    # when / then: the task computes as of now
    assert compute_segments_task.delay().get() == 1
    assert _stage(member) == "sleeping"
    assert compute_segments_task.delay().get() == 0


def test_the_command_computes_and_prints_the_stages(store):
    # given
    member = _member(store, registered_days_ago=60)
    out = io.StringIO()
    # when
    call_command("compute_segments", "--as-of", "2026-06-30", "--batch-size", "10", stdout=out)
    # then
    assert _stage(member) == "sleeping"
    text = out.getvalue()
    assert "1 members changed, 0 with RFM scores" in text
    assert "Sleeping: 1" in text


# -----------------------------------------------------------------------------
# Segment criteria
# -----------------------------------------------------------------------------
@pytest.fixture
def population(store, other_store):
    """Members differing in one criterion each from ``base`` (active, silver,
    SH001, consent, born in March, registered 2026-01-15, new, no group)."""
    gold = Tier.objects.get(code="gold")

    def make(**fields: Any) -> Member:
        values = {
            "marketing_consent": True,
            "birthday": date(1990, 3, 8),
            "created_at": local(2026, 1, 15, 12),
            "lifecycle_stage": "active",
            "rfm_group": G.IMPORTANT_VALUE,
            **fields,
        }
        registration_store = values.pop("registration_store", store)
        member = MemberFactory(store=registration_store)
        Member.objects.filter(pk=member.pk).update(**values)
        member.refresh_from_db()
        return member

    members = {
        "base": make(),
        "gold": make(tier=gold),
        "other_store": make(registration_store=other_store),
        "sleeping": make(lifecycle_stage="sleeping"),
        "no_group": make(rfm_group=""),
        "no_consent": make(marketing_consent=False),
        "june_birthday": make(birthday=date(1985, 6, 1)),
        "no_birthday": make(birthday=None),
        "registered_early": make(created_at=local(2026, 1, 1, 0, 0)),
        "registered_late": make(created_at=local(2026, 1, 31, 23, 59)),
        "frozen": make(),
        "closed": make(),
    }
    member_freeze(member=members["frozen"], by_user=None, reason="风控")
    member_close(member=members["closed"], by_user=None, reason="注销")
    return members


def _names(members: dict[str, Member], queryset: Any) -> set[str]:
    found = _ids(queryset)
    return {name for name, member in members.items() if member.pk in found}


ACTIVE_NAMES = {
    "base",
    "gold",
    "other_store",
    "sleeping",
    "no_group",
    "june_birthday",
    "no_birthday",
    "registered_early",
    "registered_late",
}


def test_an_empty_segment_is_every_active_member_who_accepts_marketing(population):
    # given
    segment = _segment()
    # when / then: frozen and closed members are never in a segment
    assert _names(population, segment_members(segment)) == ACTIVE_NAMES - {"no_consent"}
    segment.marketing_consent_only = False
    assert _names(population, segment_members(segment)) == ACTIVE_NAMES | {"no_consent"}


ALL_NAMES = ACTIVE_NAMES | {"no_consent"}


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({"lifecycle_stages": ["sleeping", "churned"]}, {"sleeping"}),
        ({"rfm_groups": [G.GENERAL_VALUE, G.IMPORTANT_VALUE]}, ALL_NAMES - {"no_group"}),
        ({"birthday_month": 6}, {"june_birthday"}),
        ({"registered_from": date(2026, 1, 2)}, ALL_NAMES - {"registered_early"}),
        ({"registered_until": date(2026, 1, 30)}, ALL_NAMES - {"registered_late"}),
        ({"registered_from": date(2026, 1, 1), "registered_until": date(2026, 1, 31)}, ALL_NAMES),
    ],
)
def test_each_criterion_filters(population, criteria, expected):
    # given a segment with one criterion, for members with or without consent
    segment = _segment(marketing_consent_only=False, **criteria)
    # when / then: registration dates are local dates, both ends included
    assert _names(population, segment_members(segment)) == expected


def test_tier_store_and_tag_criteria(population, store, other_store):
    # given
    gold = Tier.objects.get(code="gold")
    vip, mum = MemberTag.objects.create(name="VIP"), MemberTag.objects.create(name="孕妈")
    member_tags_set(members=[population["base"], population["gold"]], tags=[vip], by_user=None)
    member_tags_set(members=[population["gold"], population["sleeping"]], tags=[mum], by_user=None)
    # when / then
    assert _names(population, segment_members(_segment(tiers=[gold]))) == {"gold"}
    assert _names(population, segment_members(_segment(stores=[other_store]))) == {"other_store"}
    # any of the tags, each member once
    tagged = segment_members(_segment(tags=[vip, mum]))
    assert _names(population, tagged) == {"base", "gold", "sleeping"}
    assert tagged.count() == 3
    # all criteria together
    assert _names(population, segment_members(_segment(tiers=[gold], tags=[mum], stores=[store]))) == {"gold"}
    assert segment_size(_segment(tags=[mum], lifecycle_stages=["active"])) == 1


def test_birthday_month_zero_is_the_local_month_when_used(population):
    # given a segment of "birthdays this month"
    segment = _segment(birthday_month=0)
    # when used on 1 March 00:30 Shanghai time (still February in UTC)
    in_march = segment_members(segment, at=local(2026, 3, 1, 0, 30))
    in_june = segment_members(segment, at=local(2026, 6, 10))
    # then
    assert _names(population, in_march) == ACTIVE_NAMES - {"june_birthday", "no_birthday"}
    assert _names(population, in_june) == {"june_birthday"}


def test_size_and_sample(population):
    # given
    segment = _segment(lifecycle_stages=["active"])
    expected = _ids(segment_members(segment))
    # when
    size = segment_size(segment)
    sample = segment_sample(segment, n=3)
    everyone = segment_sample(segment, n=20)
    # then
    assert size == len(expected) == 8
    assert len(sample) == 3
    assert {member.pk for member in sample} <= expected
    assert {member.pk for member in everyone} == expected


# -----------------------------------------------------------------------------
# Member tags
# -----------------------------------------------------------------------------
def test_tags_set_is_idempotent_skips_closed_members_and_is_audited(store):
    # given
    operator = get_user_model().objects.create_user(username="op", is_staff=True)
    one, two, closed = _member(store), _member(store), _member(store)
    member_close(member=closed, by_user=None, reason="注销")
    vip, mum = MemberTag.objects.create(name="VIP"), MemberTag.objects.create(name="孕妈")
    member_tags_set(members=[one], tags=[vip], by_user=operator)
    # when
    added = member_tags_set(
        members=Member.objects.filter(pk__in=[one.pk, two.pk, closed.pk]), tags=[vip, mum], by_user=operator
    )
    again = member_tags_set(members=[one, two, closed], tags=[vip, mum], by_user=operator)
    # then
    assert (added, again) == (3, 0)
    assert _links() == {
        (one.member_no, "VIP"),
        (one.member_no, "孕妈"),
        (two.member_no, "VIP"),
        (two.member_no, "孕妈"),
    }
    events = list(
        MemberEvent.objects.filter(kind=MemberEvent.Kind.PROFILE_UPDATED)
        .order_by("pk")
        .values_list("member_id", "data", "by_user_id")
    )
    assert events == [
        (one.pk, {"tags_added": ["VIP"]}, operator.pk),
        (one.pk, {"tags_added": ["孕妈"]}, operator.pk),
        (two.pk, {"tags_added": ["VIP", "孕妈"]}, operator.pk),
    ]


def test_tags_remove(store):
    # given
    one, two = _member(store), _member(store)
    vip = MemberTag.objects.create(name="VIP")
    member_tags_set(members=[one, two], tags=[vip], by_user=None)
    # when
    removed = member_tags_remove(members=[one], tags=[vip], by_user=None)
    again = member_tags_remove(members=[one], tags=[vip], by_user=None)
    # then
    assert (removed, again) == (1, 0)
    assert _links() == {(two.member_no, "VIP")}
    assert MemberEvent.objects.filter(member=one, data={"tags_removed": ["VIP"]}).count() == 1


def test_tag_import_is_idempotent_and_reports_rejected_rows_with_their_line(store):
    # given
    one, two, closed = _member(store), _member(store), _member(store)
    member_close(member=closed, by_user=None, reason="注销")
    MemberTag.objects.create(name="VIP")
    text = (
        "member_no,tag\n"
        f"{one.member_no},VIP\n"
        f"{two.member_no}, 双11 参与 \n"
        "\n"
        f"{one.member_no},VIP\n"
        "99999999,VIP\n"
        f"{closed.member_no},VIP\n"
        f"{two.member_no},\n"
        f",VIP\n"
        f"{two.member_no},{'长' * 51}\n"
        f"{two.member_no},a,b\n"
    )
    # when
    first = member_tags_import_csv(file=_csv(text), by_user=None)
    second = member_tags_import_csv(file=_csv(text), by_user=None)
    # then
    assert (first.header, first.total, first.tagged, first.already, first.created_tags) == (
        True,
        9,
        2,
        1,
        ["双11 参与"],
    )
    assert [(row.line, row.problem) for row in first.rejected_rows] == [
        (6, "unknown_member"),
        (7, "member_closed"),
        (8, "tag_required"),
        (9, "member_no_required"),
        (10, "tag_too_long"),
        (11, "too_many_columns"),
    ]
    assert first.rejected_rows[0].message == "No member with this number."
    assert (second.tagged, second.already, second.created_tags, second.rejected) == (0, 3, [], 6)
    assert _links() == {(one.member_no, "VIP"), (two.member_no, "双11 参与")}
    assert MemberEvent.objects.filter(kind=MemberEvent.Kind.PROFILE_UPDATED).count() == 2


def test_tag_import_reads_gbk_without_a_header_and_may_refuse_new_tags(store):
    # given a GBK file without a header
    one = _member(store)
    MemberTag.objects.create(name="高价值")
    text = f"{one.member_no},高价值\n{one.member_no},新标签\n"
    # when
    report = member_tags_import_csv(file=_csv(text, "gbk"), by_user=None, create_tags=False)
    # then
    assert (report.encoding, report.header, report.tagged) == ("GBK", False, 1)
    assert [(row.line, row.problem) for row in report.rejected_rows] == [(2, "unknown_tag")]
    assert not MemberTag.objects.filter(name="新标签").exists()


def test_import_member_tags_command(store, tmp_path):
    # given
    one = _member(store)
    path = tmp_path / "tags.csv"
    path.write_text(f"member_no,tag\n{one.member_no},VIP\n00000000,VIP\n", encoding="utf-8")
    out = io.StringIO()
    # when a row is rejected the command exits with status 1 after applying the others
    with pytest.raises(CommandError) as excinfo:
        call_command("import_member_tags", str(path), stdout=out)
    # then
    assert excinfo.value.returncode == 1
    assert "line 3: unknown_member" in out.getvalue()
    assert _links() == {(one.member_no, "VIP")}
    # when the good file is imported again
    path.write_text(f"member_no,tag\n{one.member_no},VIP\n", encoding="utf-8")
    out = io.StringIO()
    call_command("import_member_tags", str(path), stdout=out)
    assert "added 0, already there 1, rejected 0" in out.getvalue()


# -----------------------------------------------------------------------------
# Admin
# -----------------------------------------------------------------------------
def _staff(username: str, role: str) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_segment_page_shows_size_and_sample_with_masked_phones(population):
    # given a segment of the sleeping members, and a marketing user (no phone permission)
    segment = _segment(lifecycle_stages=["sleeping"])
    sleeping = population["sleeping"]
    marketing = _staff("mkt", MARKETING)
    # when
    response = _client(marketing).get(reverse("admin:campaigns_segment_change", args=[segment.pk]))
    # then
    assert response.status_code == 200
    text = response.content.decode()
    assert "1 active member matches the saved criteria now." in text
    assert 'id="segment-sample"' in text
    assert sleeping.member_no in text
    assert sleeping.masked_phone in text
    assert sleeping.phone[3:] not in text
    assert population["base"].member_no not in text


def test_segment_page_shows_full_phones_to_operators(population):
    # given
    segment = _segment(lifecycle_stages=["sleeping"])
    operator = _staff("op", OPERATOR)
    # when
    response = _client(operator).get(reverse("admin:campaigns_segment_change", args=[segment.pk]))
    # then
    assert population["sleeping"].phone[3:] in response.content.decode()


def test_segment_is_saved_from_the_admin_form(population, store):
    # given
    user = get_user_model().objects.create_superuser(username="root", password="x")
    gold = Tier.objects.get(code="gold")
    # when
    response = _client(user).post(
        reverse("admin:campaigns_segment_add"),
        {
            "name": "沉睡金卡",
            "tiers": [gold.pk],
            "lifecycle_stages": ["sleeping", "churned"],
            "rfm_groups": [G.IMPORTANT_RECALL],
            "stores": [store.pk],
            "birthday_month": "0",
            "registered_from": "2026-01-01",
            "registered_until": "2026-01-31",
            "marketing_consent_only": "on",
        },
    )
    # then
    assert response.status_code == 302
    segment = Segment.objects.get(name="沉睡金卡")
    assert (segment.lifecycle_stages, segment.rfm_groups, segment.birthday_month) == (
        ["sleeping", "churned"],
        [G.IMPORTANT_RECALL],
        0,
    )
    assert list(segment.tiers.all()) == [gold]
    # and an inverted date range is refused
    response = _client(user).post(
        reverse("admin:campaigns_segment_add"),
        {"name": "错误", "registered_from": "2026-02-01", "registered_until": "2026-01-31", "birthday_month": ""},
    )
    assert response.status_code == 200
    assert not Segment.objects.filter(name="错误").exists()


def test_tag_admin_imports_and_refuses_to_delete_a_tag_used_by_a_segment(store):
    # given
    user = get_user_model().objects.create_superuser(username="root", password="x")
    client = _client(user)
    one = _member(store)
    upload = SimpleUploadedFile("tags.csv", f"member_no,tag\n{one.member_no},VIP\nnope,VIP\n".encode())
    # when
    response = client.post(reverse("admin:members_membertag_import"), {"file": upload})
    # then
    assert response.status_code == 200
    text = response.content.decode()
    assert "Tags added 1, already there 0, rejected 1 of 2 rows" in text
    assert "unknown_member" in text
    vip = MemberTag.objects.get(name="VIP")
    listing = client.get(reverse("admin:members_membertag_changelist")).content.decode()
    assert reverse("admin:members_membertag_import") in listing
    # when the tag is used by a segment, deleting it is refused
    _segment(name="VIP 会员", tags=[vip])
    page = client.get(reverse("admin:members_membertag_delete", args=[vip.pk])).content.decode()
    assert "Segment: VIP 会员" in page
    client.post(reverse("admin:members_membertag_delete", args=[vip.pk]), {"post": "yes"})
    assert MemberTag.objects.filter(pk=vip.pk).exists()


def test_segment_list_summarises_the_criteria(store):
    # given
    user = get_user_model().objects.create_superuser(username="root", password="x")
    vip = MemberTag.objects.create(name="VIP")
    _segment(
        name="生日沉睡",
        tiers=[Tier.objects.get(code="gold")],
        lifecycle_stages=["sleeping"],
        stores=[store],
        tags=[vip],
        birthday_month=0,
    )
    _segment(name="全部会员")
    # when
    response = _client(user).get(reverse("admin:campaigns_segment_changelist"))
    # then
    text = response.content.decode()
    assert response.status_code == 200
    assert "tiers: " in text
    assert "stages: Sleeping" in text
    assert "stores: SH001" in text
    assert "tags: VIP" in text
    assert "birthday in the month of use" in text
    assert "every active member" in text
