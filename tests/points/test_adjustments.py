"""Operator adjustments: a reason always, a second operator above the threshold."""

from datetime import timedelta

import pytest
from django.utils import timezone

from members.errors import ReasonRequired
from points.batch import ledger_check
from points.errors import AdjustmentNotPending, InsufficientPoints, InvalidPoints, SelfApprovalForbidden
from points.models import PointsAdjustment, PointsEntry, PointsLot
from points.services import adjustment_approve, adjustment_reject, adjustment_request
from tests.points.factories import (
    OperatorFactory,
    account_of,
    allocations_of,
    entries_of,
    ledger_snapshot,
    lots_of,
    points_give,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _threshold(settings):
    settings.LOYALTY_ADJUST_APPROVAL_THRESHOLD = 1000


@pytest.fixture
def requester():
    return OperatorFactory(username="alice")


@pytest.fixture
def approver():
    return OperatorFactory(username="bob")


def test_adjustment_up_to_the_threshold_applies_at_once(member, requester):
    # when
    adjustment = adjustment_request(member=member, points=1000, reason="  goodwill: late delivery ", by_user=requester)
    # then
    adjustment.refresh_from_db()
    assert (adjustment.status, adjustment.points, adjustment.reason) == ("applied", 1000, "goodwill: late delivery")
    assert (adjustment.requested_by, adjustment.decided_by) == (requester, requester)
    assert adjustment.decided_at is not None
    entry = adjustment.entry
    assert (entry.kind, entry.points, entry.balance_after, entry.source) == ("adjust", 1000, 1000, "operator")
    assert (entry.by_user, entry.reason, entry.reference) == (
        requester,
        "goodwill: late delivery",
        f"adjustment:{adjustment.pk}",
    )
    lot = PointsLot.objects.get(member=member)
    assert (lot.entry, lot.original, lot.remaining) == (entry, 1000, 1000)
    assert account_of(member) == (1000, 0, 0)
    assert ledger_check().ok


def test_negative_adjustment_draws_first_to_expire_first(member, requester):
    # given 300 points expiring sooner and 500 later
    now = timezone.now()
    early = points_give(member, 300, at=now - timedelta(days=200), expires_at=now + timedelta(days=30)).lots.get()
    late = points_give(member, 500, at=now - timedelta(days=10)).lots.get()
    # when
    adjustment = adjustment_request(member=member, points=-400, reason="duplicate bonus", by_user=requester)
    # then
    adjustment.refresh_from_db()
    assert adjustment.status == "applied"
    assert (adjustment.entry.kind, adjustment.entry.points, adjustment.entry.balance_after) == ("adjust", -400, 400)
    assert allocations_of(adjustment.entry) == [(early.pk, -300), (late.pk, -100)]
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(300, 0), (500, 400)]
    assert account_of(member) == (400, 0, 0)
    assert ledger_check().ok


def test_adjustment_above_the_threshold_waits_for_a_second_operator(member, requester, approver):
    # given
    before = ledger_snapshot()
    # when
    adjustment = adjustment_request(member=member, points=1001, reason="compensation", by_user=requester)
    # then nothing is in the ledger yet
    adjustment.refresh_from_db()
    assert (adjustment.status, adjustment.entry, adjustment.decided_by) == ("pending", None, None)
    after_request = ledger_snapshot()
    assert {k: v for k, v in after_request.items() if k != "adjustments"} == {
        k: v for k, v in before.items() if k != "adjustments"
    }

    # when the requester tries to approve it
    with pytest.raises(SelfApprovalForbidden) as refused:
        adjustment_approve(adjustment=adjustment, by_user=requester)
    # then
    assert (refused.value.code, refused.value.http_status) == ("self_approval_forbidden", 403)
    assert ledger_snapshot() == after_request

    # when a second operator approves
    approved = adjustment_approve(adjustment=adjustment, by_user=approver)
    # then
    approved.refresh_from_db()
    assert (approved.status, approved.decided_by, approved.requested_by) == ("applied", approver, requester)
    assert (approved.entry.kind, approved.entry.points, approved.entry.reason) == ("adjust", 1001, "compensation")
    assert entries_of(member) == [("adjust", 1001, 1001, "operator")]
    assert account_of(member) == (1001, 0, 0)
    assert ledger_check().ok

    # when approved again
    after_approval = ledger_snapshot()
    with pytest.raises(AdjustmentNotPending):
        adjustment_approve(adjustment=adjustment, by_user=OperatorFactory(username="carol"))
    # then
    assert ledger_snapshot() == after_approval


def test_rejected_adjustment_writes_nothing_to_the_ledger(member, requester, approver):
    # given
    adjustment = adjustment_request(member=member, points=-5000, reason="suspected fraud", by_user=requester)
    # when
    adjustment_reject(adjustment=adjustment, by_user=approver)
    # then
    adjustment.refresh_from_db()
    assert (adjustment.status, adjustment.decided_by, adjustment.entry) == ("rejected", approver, None)
    assert adjustment.decided_at is not None
    assert not PointsEntry.objects.exists()
    # and it can no longer be approved or rejected
    before = ledger_snapshot()
    with pytest.raises(AdjustmentNotPending):
        adjustment_approve(adjustment=adjustment, by_user=approver)
    with pytest.raises(AdjustmentNotPending):
        adjustment_reject(adjustment=adjustment, by_user=approver)
    assert ledger_snapshot() == before


def test_negative_adjustment_beyond_spendable_is_refused_and_nothing_written(member, requester):
    # given 300 points
    points_give(member, 300, at=timezone.now() - timedelta(days=1))
    before = ledger_snapshot()
    # when
    with pytest.raises(InsufficientPoints) as refused:
        adjustment_request(member=member, points=-301, reason="correction", by_user=requester)
    # then
    assert refused.value.params == {"available": 300, "requested": 301}
    assert ledger_snapshot() == before
    assert not PointsAdjustment.objects.exists()
    assert account_of(member) == (300, 0, 0)
    assert ledger_check().ok


def test_approving_a_debit_beyond_spendable_is_refused_and_it_stays_pending(member, requester, approver):
    # given 1 200 points and a −1 500 adjustment waiting for approval
    points_give(member, 1200, at=timezone.now() - timedelta(days=1))
    adjustment = adjustment_request(member=member, points=-1500, reason="correction", by_user=requester)
    before = ledger_snapshot()
    # when
    with pytest.raises(InsufficientPoints):
        adjustment_approve(adjustment=adjustment, by_user=approver)
    # then
    assert ledger_snapshot() == before
    adjustment.refresh_from_db()
    assert (adjustment.status, adjustment.decided_by) == ("pending", None)
    assert account_of(member) == (1200, 0, 0)
    assert ledger_check().ok


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_reason_is_required(member, requester, reason):
    # given
    before = ledger_snapshot()
    # when
    with pytest.raises(ReasonRequired) as refused:
        adjustment_request(member=member, points=10, reason=reason, by_user=requester)
    # then
    assert refused.value.code == "reason_required"
    assert ledger_snapshot() == before


def test_zero_points_is_refused(member, requester):
    # given
    before = ledger_snapshot()
    # when
    with pytest.raises(InvalidPoints):
        adjustment_request(member=member, points=0, reason="nothing", by_user=requester)
    # then
    assert ledger_snapshot() == before
