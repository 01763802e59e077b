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
