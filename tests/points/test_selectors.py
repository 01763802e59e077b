from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from points.errors import InvalidAmount
from points.selectors import points_summary_get
from points.services import purchase_refund
from tests.points.factories import buy, ledger_snapshot, points_give

pytestmark = pytest.mark.django_db


def test_summary_does_not_count_lapsed_points_as_spendable(member):
    # given 300 points that expired an hour ago (the nightly job has not run) and 100 valid ones
    now = timezone.now()
    points_give(member, 300, at=now - timedelta(days=400), expires_at=now - timedelta(hours=1))
    points_give(member, 100, at=now - timedelta(days=1))
    # when
    summary = points_summary_get(member=member, now=now)
    # then the balance still shows them until expiry writes its entry, but they cannot be spent
    assert summary["balance"] == 400
    assert summary["spendable"] == 100
    assert summary["cash_value"] == Decimal("1.00")


def test_refund_of_zero_is_refused_and_changes_nothing(store, terminal, member):
    # given a purchase
    now = timezone.now()
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=now)
    before = ledger_snapshot()
    # when
    with pytest.raises(InvalidAmount):
        purchase_refund(store=store, terminal=terminal, receipt_no="R-1", refund_no="F-1", amount=Decimal("0"))
    # then
    assert ledger_snapshot() == before


def test_summary_groups_points_expiring_within_30_days_by_their_last_valid_day(member):
    # given lots expiring at local midnight in 5 days (two of them), in 12 days, and in 45 days
    now = timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    points_give(member, 10, at=now - timedelta(days=300), expires_at=midnight + timedelta(days=5))
    points_give(member, 20, at=now - timedelta(days=299), expires_at=midnight + timedelta(days=5))
    points_give(member, 40, at=now - timedelta(days=290), expires_at=midnight + timedelta(days=12))
    points_give(member, 80, at=now - timedelta(days=200), expires_at=midnight + timedelta(days=45))
    # when
    summary = points_summary_get(member=member, now=now)
    # then each last valid day (the day before the expiry midnight) with its points, the 45-day lot left out
    assert summary["expiring"] == [
        {"expires_on": (midnight + timedelta(days=4)).date(), "points": 30},
        {"expires_on": (midnight + timedelta(days=11)).date(), "points": 40},
    ]
    assert (summary["expiring_30d"], summary["balance"], summary["spendable"]) == (70, 150, 150)
