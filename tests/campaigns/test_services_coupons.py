"""Coupons: issue, exchange, write-off, void and re-issue, expiry, coupons in
purchases and refunds, the append-only history, the retry queue and tier privileges."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns.errors import (
    BenefitUnavailable,
    CouponAlreadyWrittenOff,
    CouponBelowMinimumSpend,
    CouponExpired,
    CouponNotFound,
    CouponNotMembers,
    CouponNotRestorable,
    CouponNotYetValid,
    CouponVoid,
    CouponWrongStore,
    MemberLimitReached,
    OutOfStock,
)
from campaigns.models import Benefit, Coupon, CouponEvent, CouponIssueRequest
from campaigns.services import coupons as coupon_services
from campaigns.services.coupons import (
    CODE_ALPHABET,
    benefit_exchange,
    coupon_reissue,
    coupon_void,
    coupon_write_off,
    coupons_expire_due,
)
from campaigns.services.issuing import (
    coupon_issue_enqueue,
    coupon_issue_process,
    coupon_issue_retry,
    coupon_issue_sweep,
    tier_privileges_grant,
    tier_privileges_grant_monthly,
)
from loyalty.errors import LoyaltyError
from members.errors import MemberCodeRequired, MemberFrozen, ReasonRequired
from members.services import member_freeze
from points.batch import ledger_check
from points.errors import InsufficientPoints
from points.models import PointsEntry, PointsLot, Purchase
from points.services import purchase_record, purchase_refund
from tests.campaigns.factories import (
    BenefitFactory,
    coupon_give,
    coupon_snapshot,
    coupon_state,
    events_of,
    issued_count,
)
from tests.points.factories import (
    MemberFactory,
    OperatorFactory,
    account_of,
    by_code,
    by_number,
    entries_of,
    ledger_snapshot,
    local,
    member_in_tier,
    points_give,
)

pytestmark = pytest.mark.django_db

T = local(2026, 3, 1, 10, 0)
ISSUED_ONLY = ("issued", None, None, None, "", None)


def _refused(error_class: type[LoyaltyError], call, *args, **kwargs) -> LoyaltyError:
    """Run ``call``, expect ``error_class``, and prove that nothing was written."""
    before = (coupon_snapshot(), ledger_snapshot())
    with pytest.raises(error_class) as info:
        call(*args, **kwargs)
    assert (coupon_snapshot(), ledger_snapshot()) == before
    return info.value


# -----------------------------------------------------------------------------
# Issue
# -----------------------------------------------------------------------------
def test_issue_makes_an_unguessable_coupon_valid_n_days_and_takes_one_from_stock(member):
    # given a benefit of 3 valid 30 days after issue
    benefit = BenefitFactory(total_stock=3)
    # when an operator grants one
    coupon = coupon_give(benefit, member, at=T)
    # then
    coupon.refresh_from_db()
    assert len(coupon.code) == 12
    assert set(coupon.code) <= set(CODE_ALPHABET)
    assert (coupon.benefit, coupon.member, coupon.status, coupon.source, coupon.reference) == (
        benefit,
        member,
        "issued",
        "operator",
        "",
    )
    assert (coupon.issued_at, coupon.valid_from, coupon.valid_until) == (T, T, T + timedelta(days=30))
    assert issued_count(benefit) == 1
    assert events_of(coupon) == [("issued", None, None, "", "operator")]
    assert CouponEvent.objects.get(coupon=coupon).created_at == T


def test_issue_with_fixed_validity_uses_the_benefits_dates(member):
    # given a benefit valid for fixed dates, and one with only an end date
    fixed = BenefitFactory(validity=Benefit.Validity.FIXED, valid_from=local(2026, 3, 8), valid_until=local(2026, 4, 1))
    open_start = BenefitFactory(validity=Benefit.Validity.FIXED, valid_until=local(2026, 4, 1))
    # when
    first = coupon_give(fixed, member, at=T)
    second = coupon_give(open_start, member, at=T)
    # then the dates are the benefit's, whatever the issue time; without a start, from issue
    assert (first.valid_from, first.valid_until) == (local(2026, 3, 8), local(2026, 4, 1))
    assert (second.valid_from, second.valid_until) == (T, local(2026, 4, 1))


def test_issue_counts_stock_in_the_database_even_from_a_stale_benefit_and_never_oversells(member):
    # given a benefit of 2, loaded once and never refreshed (issued_count 0 in memory)
    benefit = BenefitFactory(total_stock=2)
    other = MemberFactory()
    # when three coupons are issued from that stale object
    coupon_give(benefit, member, at=T)
    coupon_give(benefit, other, at=T)
    assert benefit.issued_count == 0
    error = _refused(OutOfStock, coupon_give, benefit, member, at=T)
    # then the counter was bumped in SQL (F()) and the third was refused by its condition
    assert (error.code, error.http_status) == ("out_of_stock", 409)
    assert issued_count(benefit) == 2
    assert Coupon.objects.filter(benefit=benefit).count() == 2


def test_issue_refuses_once_stock_is_gone(member):
    # given a sold-out benefit as the catalogue loads it
    benefit = BenefitFactory(total_stock=1)
    coupon_give(benefit, MemberFactory(), at=T)
    benefit.refresh_from_db()
    # when / then
    _refused(OutOfStock, coupon_give, benefit, member, at=T)
    assert issued_count(benefit) == 1


def test_issue_refuses_beyond_the_per_member_limit_but_a_void_coupon_does_not_count(member):
    # given a benefit limited to one per member, and the member holds one
    benefit = BenefitFactory(per_member_limit=1)
    first = coupon_give(benefit, member, at=T)
    # when a second is issued
    error = _refused(MemberLimitReached, coupon_give, benefit, member, at=T)
    # then
    assert (error.code, error.http_status, error.params) == ("member_limit_reached", 409, {"limit": 1})
    assert issued_count(benefit) == 1
    # when the first is voided, a new one can be issued
    coupon_void(coupon=first, by_user=None, reason="printed wrongly")
    second = coupon_give(benefit, member, at=T)
    assert Coupon.objects.filter(benefit=benefit, member=member).count() == 2
    assert second.status == "issued"
    assert issued_count(benefit) == 2


def test_issue_refuses_tiers_not_eligible(member):
    # given a gold-only benefit and a silver member
    benefit = BenefitFactory(eligible_tiers=["gold", "platinum"])
    # when
    error = _refused(BenefitUnavailable, coupon_give, benefit, member, at=T)
    # then
    assert (error.code, error.http_status, error.detail) == ("benefit_unavailable", 409, {"reason": "tier"})
    assert error.render_message() == "This benefit cannot be exchanged: not for your tier"
    # when the member is gold
    member_in_tier(member, "gold", since=T - timedelta(days=1))
    coupon = coupon_give(benefit, member, at=T)
    # then
    assert coupon.status == "issued"
    assert issued_count(benefit) == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"active_from": T + timedelta(seconds=1)}, "not_started"),
        ({"active_until": T}, "ended"),
        ({"is_active": False}, "inactive"),
        ({"validity": "fixed", "valid_until": T}, "ended"),
    ],
)
def test_issue_refuses_outside_the_active_window(member, fields, reason):
    # given a benefit not exchangeable at T
    benefit = BenefitFactory(**fields)
    # when
    error = _refused(BenefitUnavailable, coupon_give, benefit, member, at=T)
    # then
    assert error.detail == {"reason": reason}
    assert issued_count(benefit) == 0


def test_issue_inside_the_active_window(member):
    # given a benefit exchangeable from T until a second later
    benefit = BenefitFactory(active_from=T, active_until=T + timedelta(seconds=1))
    # when
    coupon = coupon_give(benefit, member, at=T)
    # then
    assert coupon.status == "issued"


def test_issue_refuses_a_frozen_member(member):
    # given
    benefit = BenefitFactory()
    member = member_freeze(member=member, by_user=None, reason="fraud check")
    # when
    error = _refused(MemberFrozen, coupon_give, benefit, member, at=T)
    # then
    assert (error.code, error.http_status) == ("member_frozen", 409)


def test_issue_with_a_reference_issues_once(member):
    # given a coupon issued for this month's tier privilege
    benefit = BenefitFactory(total_stock=10)
    first = coupon_give(benefit, member, at=T, source="tier_privilege", reference="tier:2026-03:gold")
    # when the same reference is issued again
    again = coupon_give(
        benefit, member, at=T + timedelta(hours=1), source="tier_privilege", reference="tier:2026-03:gold"
    )
    # then the first coupon comes back; no stock, no event
    assert again.pk == first.pk
    assert issued_count(benefit) == 1
    assert CouponEvent.objects.count() == 1
    # when another period is issued
    april = coupon_give(benefit, member, at=T, source="tier_privilege", reference="tier:2026-04:gold")
    # then
    assert april.pk != first.pk
    assert issued_count(benefit) == 2


# -----------------------------------------------------------------------------
# Exchange for points
# -----------------------------------------------------------------------------
def test_exchange_debits_exactly_the_price_through_the_ledger(member):
    # given 1000 points and a benefit of 300 points
    points_give(member, 1000, at=T - timedelta(days=1))
    benefit = BenefitFactory(name="咖啡券", points_price=300, total_stock=5)
    # when
    coupon = benefit_exchange(benefit=benefit, member=member, at=T)
    # then the coupon, the stock and the points moved together
    coupon.refresh_from_db()
    assert (coupon.source, coupon.status, coupon.valid_from, coupon.valid_until) == (
        "exchange",
        "issued",
        T,
        T + timedelta(days=30),
    )
    assert issued_count(benefit) == 1
    assert account_of(member) == (700, 0, 0)
    assert entries_of(member) == [("bonus", 1000, 1000, "campaign"), ("redeem", -300, 700, "benefit")]
    entry = PointsEntry.objects.get(member=member, kind="redeem")
    assert coupon.exchange_entry == entry
    assert (entry.reason, entry.reference, entry.created_at) == ("咖啡券", f"coupon:{coupon.code}", T)
    assert list(PointsLot.objects.filter(member=member).values_list("original", "remaining")) == [(1000, 700)]
    assert events_of(coupon) == [("issued", None, None, "", "exchange")]
    assert ledger_check().ok


def test_exchange_with_too_few_points_writes_nothing(member):
    # given 299 points and a benefit of 300
    points_give(member, 299, at=T - timedelta(days=1))
    benefit = BenefitFactory(points_price=300, total_stock=5)
    # when
    error = _refused(InsufficientPoints, benefit_exchange, benefit=benefit, member=member, at=T)
    # then no coupon, no stock taken, no points moved
    assert (error.code, error.http_status, error.params) == (
        "insufficient_points",
        409,
        {"available": 299, "requested": 300},
    )
    assert Coupon.objects.count() == 0
    assert CouponEvent.objects.count() == 0
    assert issued_count(benefit) == 0
    assert account_of(member) == (299, 0, 0)


def test_exchange_of_a_benefit_without_a_points_price_is_refused(member):
    # given a benefit only operators grant
    points_give(member, 1000, at=T - timedelta(days=1))
    benefit = BenefitFactory(points_price=0)
    # when
    error = _refused(BenefitUnavailable, benefit_exchange, benefit=benefit, member=member, at=T)
    # then
    assert error.detail == {"reason": "not_exchangeable"}


def test_exchange_beyond_the_limit_or_stock_keeps_the_points(member):
    # given 1000 points, one benefit limited to one per member and one sold out
    points_give(member, 1000, at=T - timedelta(days=1))
    limited = BenefitFactory(points_price=100, per_member_limit=1)
    benefit_exchange(benefit=limited, member=member, at=T)
    sold_out = BenefitFactory(points_price=100, total_stock=0)
    # when / then
    _refused(MemberLimitReached, benefit_exchange, benefit=limited, member=member, at=T)
    _refused(OutOfStock, benefit_exchange, benefit=sold_out, member=member, at=T)
    assert account_of(member) == (900, 0, 0)


# -----------------------------------------------------------------------------
# Write-off
# -----------------------------------------------------------------------------
def _write_off(coupon, store, terminal, *, at, **kwargs):
    return coupon_write_off(code=coupon.code, store=store, terminal=terminal, at=at, **kwargs)


def test_write_off_happens_once_and_the_second_try_names_the_first(store, other_store, terminal, member):
    # given an issued coupon
    coupon = coupon_give(BenefitFactory(), member, at=T)
    # when it is written off at the till
    written = _write_off(coupon, store, terminal, receipt_no="R-1", at=T + timedelta(hours=1))
    # then
    assert written.status == "written_off"
    assert coupon_state(coupon) == ("written_off", T + timedelta(hours=1), store.pk, terminal.pk, "R-1", None)
    assert events_of(coupon) == [
        ("issued", None, None, "", "operator"),
        ("written_off", store.pk, terminal.pk, "R-1", ""),
    ]
    # when another store tries again a day later
    from members.services import terminal_create

    other_terminal, _ = terminal_create(store=other_store, name="till-9")
    error = _refused(
        CouponAlreadyWrittenOff,
        _write_off,
        coupon,
        other_store,
        other_terminal,
        receipt_no="B-7",
        at=T + timedelta(days=1),
    )
    # then it is refused, naming the store, terminal, receipt and time of the first
    assert (error.code, error.http_status) == ("coupon_already_written_off", 409)
    assert error.detail == {
        "store": "SH001",
        "terminal": terminal.pk,
        "receipt_no": "R-1",
        "written_off_at": "2026-03-01T03:00:00+00:00",  # stored in UTC
    }
    assert error.render_message() == (
        "This coupon was already used at 上海南京西路店 (terminal till-1, receipt R-1) on 2026-03-01 11:00:00."
    )


def test_write_off_refuses_an_expired_coupon(store, terminal, member):
    # given a coupon valid until T + 30 days
    coupon = coupon_give(BenefitFactory(), member, at=T)
    # when used at its last instant
    error = _refused(CouponExpired, _write_off, coupon, store, terminal, at=T + timedelta(days=30))
    # then
    assert (error.code, error.http_status) == ("coupon_expired", 410)
    assert error.detail == {"valid_until": "2026-03-31T02:00:00+00:00"}
    assert error.render_message() == "This coupon expired on 2026-03-31 10:00."
    assert coupon_state(coupon) == ISSUED_ONLY


def test_write_off_refuses_a_coupon_the_expiry_job_expired(store, terminal, member):
    # given a coupon marked expired
    coupon = coupon_give(BenefitFactory(), member, at=T)
    coupons_expire_due(as_of=T + timedelta(days=30))
    # when (with the clock wound back: status alone decides)
    error = _refused(CouponExpired, _write_off, coupon, store, terminal, at=T + timedelta(days=1))
    # then
    assert error.code == "coupon_expired"


def test_write_off_refuses_a_coupon_not_yet_valid(store, terminal, member):
    # given a coupon valid from 8 March
    benefit = BenefitFactory(
        validity=Benefit.Validity.FIXED, valid_from=local(2026, 3, 8), valid_until=local(2026, 4, 1)
    )
    coupon = coupon_give(benefit, member, at=T)
    # when used on 1 March
    error = _refused(CouponNotYetValid, _write_off, coupon, store, terminal, at=T)
    # then
    assert (error.code, error.http_status, error.detail) == (
        "coupon_not_yet_valid",
        409,
        {"valid_from": "2026-03-07T16:00:00+00:00"},
    )
    assert error.render_message() == "This coupon can be used from 2026-03-08 00:00."
    assert coupon_state(coupon) == ISSUED_ONLY


def test_write_off_refuses_a_void_coupon(store, terminal, member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    coupon_void(coupon=coupon, by_user=None, reason="customer complaint")
    # when
    error = _refused(CouponVoid, _write_off, coupon, store, terminal, at=T)
    # then
    assert (error.code, error.http_status) == ("coupon_void", 410)
    assert coupon_state(coupon) == ("void", None, None, None, "", None)


def test_write_off_refuses_a_store_the_benefit_is_not_for(store, other_store, terminal, member):
    # given a benefit for Beijing only
    coupon = coupon_give(BenefitFactory(stores=[other_store]), member, at=T)
    # when used in Shanghai
    error = _refused(CouponWrongStore, _write_off, coupon, store, terminal, at=T)
    # then
    assert (error.code, error.http_status, error.detail) == ("coupon_wrong_store", 403, {"store": "SH001"})
    assert coupon_state(coupon) == ISSUED_ONLY


def test_write_off_refuses_another_members_coupon(store, terminal, member):
    # given a coupon of another member
    coupon = coupon_give(BenefitFactory(), MemberFactory(), at=T)
    # when this member presents it
    error = _refused(CouponNotMembers, _write_off, coupon, store, terminal, member=member, at=T)
    # then
    assert (error.code, error.http_status) == ("coupon_not_members", 403)
    assert coupon_state(coupon) == ISSUED_ONLY


def test_write_off_refuses_a_frozen_members_coupon(store, terminal, member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    member_freeze(member=member, by_user=None, reason="fraud check")
    # when
    error = _refused(MemberFrozen, _write_off, coupon, store, terminal, at=T)
    # then
    assert (error.code, error.http_status) == ("member_frozen", 409)
    assert coupon_state(coupon) == ISSUED_ONLY


def test_write_off_refuses_a_bill_below_the_minimum_spend(store, terminal, member):
    # given a coupon for bills of ¥100 or more
    coupon = coupon_give(BenefitFactory(min_spend=Decimal("100.00")), member, at=T)
    # when the bill is ¥99.99
    error = _refused(CouponBelowMinimumSpend, _write_off, coupon, store, terminal, amount=Decimal("99.99"), at=T)
    # then
    assert (error.code, error.http_status) == ("coupon_minimum_spend", 409)
    assert error.render_message() == "This coupon needs a bill of at least 100.00."
    # and ¥100.00 is enough
    assert _write_off(coupon, store, terminal, amount=Decimal("100.00"), at=T).status == "written_off"


def test_write_off_refuses_an_unknown_code(store, terminal, member):
    # given
    coupon_give(BenefitFactory(), member, at=T)
    # when
    error = _refused(CouponNotFound, coupon_write_off, code="zzzz-zzzz-zzzz", store=store, terminal=terminal, at=T)
    # then
    assert (error.code, error.http_status, error.detail) == ("coupon_not_found", 404, {"code": "ZZZZZZZZZZZZ"})


def test_write_off_normalises_the_typed_code(store, terminal, member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    typed = "-".join([coupon.code[:4], coupon.code[4:8], coupon.code[8:]]).lower()
    # when
    written = coupon_write_off(code=f" {typed} ", store=store, terminal=terminal, at=T)
    # then
    assert written.pk == coupon.pk
    assert coupon_state(coupon)[0] == "written_off"


# -----------------------------------------------------------------------------
# Void and re-issue
# -----------------------------------------------------------------------------
def test_void_needs_a_reason_and_records_who_and_why(member):
    # given
    operator = OperatorFactory()
    coupon = coupon_give(BenefitFactory(), member, at=T)
    # when no reason is given
    _refused(ReasonRequired, coupon_void, coupon=coupon, by_user=operator, reason="  ")
    # when a reason is given
    coupon_void(coupon=coupon, by_user=operator, reason="customer complaint")
    # then
    assert coupon_state(coupon) == ("void", None, None, None, "", None)
    event = CouponEvent.objects.filter(coupon=coupon).order_by("pk").last()
    assert (event.kind, event.by_user, event.reason) == ("void", operator, "customer complaint")


def test_void_refuses_a_written_off_coupon(store, terminal, member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    _write_off(coupon, store, terminal, receipt_no="R-1", at=T)
    # when
    error = _refused(CouponNotRestorable, coupon_void, coupon=coupon, by_user=None, reason="oops")
    # then
    assert (error.code, error.http_status) == ("coupon_not_restorable", 409)


def test_reissue_voids_the_old_coupon_and_links_the_new_one_to_it(member):
    # given an issued coupon of a benefit of which one is left
    operator = OperatorFactory()
    benefit = BenefitFactory(total_stock=1, per_member_limit=1)
    old = coupon_give(benefit, member, at=T)
    before = timezone.now()
    # when an operator re-issues it
    new = coupon_reissue(coupon=old, by_user=operator, reason="member lost the printed code")
    # then the old is void, the new replaces it, without taking stock or limit again
    assert coupon_state(old) == ("void", None, None, None, "", None)
    new.refresh_from_db()
    assert (new.replaces, new.member, new.benefit, new.source, new.status) == (
        old,
        member,
        benefit,
        "reissue",
        "issued",
    )
    assert new.code != old.code
    assert before <= new.issued_at == new.valid_from <= timezone.now()
    assert new.valid_until == new.issued_at + timedelta(days=30)
    assert old.replaced_by == new
    assert issued_count(benefit) == 1
    assert [kind for kind, *_ in events_of(old)] == ["issued", "void"]
    assert events_of(new) == [("issued", None, None, "", "member lost the printed code")]
    assert CouponEvent.objects.filter(coupon=new).get().by_user == operator


def test_reissue_needs_a_reason_and_refuses_written_off_or_already_replaced_coupons(store, terminal, member):
    # given a written-off coupon and a coupon already re-issued
    benefit = BenefitFactory()
    used = coupon_give(benefit, member, at=T)
    _write_off(used, store, terminal, receipt_no="R-1", at=T)
    replaced = coupon_give(benefit, member, at=T)
    coupon_reissue(coupon=replaced, by_user=None, reason="lost")
    replaced.refresh_from_db()
    # when / then
    _refused(ReasonRequired, coupon_reissue, coupon=replaced, by_user=None, reason="")
    used.refresh_from_db()
    assert _refused(CouponNotRestorable, coupon_reissue, coupon=used, by_user=None, reason="again").code == (
        "coupon_not_restorable"
    )
    _refused(CouponNotRestorable, coupon_reissue, coupon=replaced, by_user=None, reason="again")


# -----------------------------------------------------------------------------
# Expiry
# -----------------------------------------------------------------------------
def test_expiry_is_set_based_writes_an_event_each_and_reruns_expire_nothing(store, terminal, member):
    # given coupons valid until T+30d and T+10d, one valid longer, one written off
    benefit = BenefitFactory()
    due = coupon_give(benefit, member, at=T)
    short = coupon_give(BenefitFactory(valid_days=10), member, at=T)
    later = coupon_give(benefit, member, at=T + timedelta(days=1))
    used = coupon_give(benefit, member, at=T)
    _write_off(used, store, terminal, receipt_no="R-1", at=T)
    started = timezone.now()
    # when the job runs at T+30d, one coupon per batch
    expired = coupons_expire_due(as_of=T + timedelta(days=30), batch_size=1)
    # then
    assert expired == 2
    assert [coupon_state(c)[0] for c in (due, short, later, used)] == ["expired", "expired", "issued", "written_off"]
    events = CouponEvent.objects.filter(kind="expired").order_by("coupon_id")
    assert [(e.coupon_id, e.store_id, e.terminal_id, e.by_user_id, e.reason) for e in events] == [
        (due.pk, None, None, None, ""),
        (short.pk, None, None, None, ""),
    ]
    assert all(started <= e.created_at <= timezone.now() for e in events)
    # when it runs again
    snapshot = coupon_snapshot()
    assert coupons_expire_due(as_of=T + timedelta(days=30)) == 0
    # then
    assert coupon_snapshot() == snapshot


# -----------------------------------------------------------------------------
# Coupons in purchases and refunds
# -----------------------------------------------------------------------------
def _buy(store, terminal, member, receipt_no, amount, at, *, coupon_codes, points_to_use=0, identified=None):
    return purchase_record(
        store=store,
        terminal=terminal,
        receipt_no=receipt_no,
        amount=Decimal(amount),
        paid_at=at,
        now=at,
        identified=identified or by_code(member, at),
        points_to_use=points_to_use,
        coupon_codes=coupon_codes,
    )


def test_coupons_in_a_purchase_need_the_member_code(store, terminal, member):
    # given a coupon, and a member identified by typed member number
    coupon = coupon_give(BenefitFactory(), member, at=T)
    # when
    error = _refused(
        MemberCodeRequired,
        _buy,
        store,
        terminal,
        member,
        "R-1",
        "100.00",
        T,
        coupon_codes=[coupon.code],
        identified=by_number(member),
    )
    # then
    assert (error.code, error.http_status) == ("member_code_required", 403)
    assert Purchase.objects.count() == 0
    assert coupon_state(coupon) == ISSUED_ONLY


def test_purchase_writes_off_its_coupons_against_itself(store, terminal, member):
    # given a ¥20-off coupon for bills of ¥100 or more
    benefit = BenefitFactory(name="满100减20", value=Decimal("20.00"), min_spend=Decimal("100.00"))
    coupon = coupon_give(benefit, member, at=T)
    # when a ¥100 purchase uses it (code typed in lower case)
    result = _buy(store, terminal, member, "R-1", "100.00", T + timedelta(hours=1), coupon_codes=[coupon.code.lower()])
    # then
    assert result.coupons_written_off == [
        {
            "code": coupon.code,
            "name": "满100减20",
            "kind": "cash_off",
            "value": Decimal("20.00"),
            "cash_price": Decimal("0.00"),
        }
    ]
    assert coupon_state(coupon) == (
        "written_off",
        T + timedelta(hours=1),
        store.pk,
        terminal.pk,
        "R-1",
        result.purchase.pk,
    )
    assert events_of(coupon)[-1] == ("written_off", store.pk, terminal.pk, "R-1", "")
    assert (result.purchase.points_earned, result.balance) == (100, 100)


def test_the_same_coupon_twice_in_one_purchase_is_written_off_once(store, terminal, member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    # when the till sends the code twice, once as typed and once as scanned
    result = _buy(store, terminal, member, "R-1", "100.00", T, coupon_codes=[coupon.code.lower(), coupon.code])
    # then
    assert [row["code"] for row in result.coupons_written_off] == [coupon.code]
    assert [kind for kind, *_ in events_of(coupon)] == ["issued", "written_off"]


def test_a_failing_coupon_rolls_back_the_whole_purchase(store, terminal, member):
    # given 1000 points, a valid coupon and an expired one
    points_give(member, 1000, at=T - timedelta(days=1))
    good = coupon_give(BenefitFactory(), member, at=T)
    stale = coupon_give(BenefitFactory(valid_days=1), member, at=T - timedelta(days=2))
    # when a purchase paying with 200 points uses both
    error = _refused(
        CouponExpired,
        _buy,
        store,
        terminal,
        member,
        "R-1",
        "100.00",
        T,
        coupon_codes=[good.code, stale.code],
        points_to_use=200,
    )
    # then no purchase, no ledger entry, and the good coupon is still issued
    assert error.code == "coupon_expired"
    assert Purchase.objects.count() == 0
    assert entries_of(member) == [("bonus", 1000, 1000, "campaign")]
    assert coupon_state(good) == ISSUED_ONLY


def test_full_refund_restores_coupons_still_valid_and_they_can_be_used_again(store, terminal, member):
    # given a ¥100 purchase that used a coupon
    coupon = coupon_give(BenefitFactory(), member, at=T)
    _buy(store, terminal, member, "R-1", "100.00", T, coupon_codes=[coupon.code])
    # when it is refunded in full the next day
    result = purchase_refund(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        refund_no="F-1",
        amount=Decimal("100.00"),
        at=T + timedelta(days=1),
    )
    # then the coupon is issued again, its history kept
    assert result.coupons_restored == [coupon.code]
    assert coupon_state(coupon) == ISSUED_ONLY
    assert [e[:4] for e in events_of(coupon)] == [
        ("issued", None, None, ""),
        ("written_off", store.pk, terminal.pk, "R-1"),
        ("restored", store.pk, None, "R-1"),
    ]
    # and it can be used on another purchase
    again = _buy(store, terminal, member, "R-2", "50.00", T + timedelta(days=2), coupon_codes=[coupon.code])
    assert [row["code"] for row in again.coupons_written_off] == [coupon.code]


def test_partial_refund_keeps_coupons_written_off_until_the_rest_is_refunded(store, terminal, member):
    # given a ¥100 purchase that used a coupon
    coupon = coupon_give(BenefitFactory(), member, at=T)
    purchase = _buy(store, terminal, member, "R-1", "100.00", T, coupon_codes=[coupon.code]).purchase
    # when ¥30 is refunded
    partial = purchase_refund(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        refund_no="F-1",
        amount=Decimal("30.00"),
        at=T + timedelta(days=1),
    )
    # then
    assert partial.coupons_restored == []
    assert coupon_state(coupon) == ("written_off", T, store.pk, terminal.pk, "R-1", purchase.pk)
    # when the remaining ¥70 is refunded
    rest = purchase_refund(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        refund_no="F-2",
        amount=Decimal("70.00"),
        at=T + timedelta(days=2),
    )
    # then
    assert rest.coupons_restored == [coupon.code]
    assert coupon_state(coupon) == ISSUED_ONLY


def test_full_refund_leaves_expired_coupons_written_off(store, terminal, member):
    # given a purchase that used a coupon valid 30 days and one valid 2 days
    lasting = coupon_give(BenefitFactory(), member, at=T)
    brief = coupon_give(BenefitFactory(valid_days=2), member, at=T)
    purchase = _buy(store, terminal, member, "R-1", "100.00", T, coupon_codes=[lasting.code, brief.code]).purchase
    # when refunded in full three days later
    result = purchase_refund(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        refund_no="F-1",
        amount=Decimal("100.00"),
        at=T + timedelta(days=3),
    )
    # then only the coupon still valid comes back
    assert result.coupons_restored == [lasting.code]
    assert coupon_state(lasting) == ISSUED_ONLY
    assert coupon_state(brief) == ("written_off", T, store.pk, terminal.pk, "R-1", purchase.pk)
    assert [kind for kind, *_ in events_of(brief)] == ["issued", "written_off"]


# -----------------------------------------------------------------------------
# History is append-only
# -----------------------------------------------------------------------------
def test_coupon_events_cannot_be_updated_or_deleted(member):
    # given
    coupon = coupon_give(BenefitFactory(), member, at=T)
    event = CouponEvent.objects.get(coupon=coupon)
    # when / then the database refuses
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        CouponEvent.objects.filter(pk=event.pk).update(reason="rewritten")
    event.reason = "rewritten"
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        event.save()
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        CouponEvent.objects.filter(pk=event.pk).delete()
    assert list(CouponEvent.objects.values_list("pk", "kind", "reason")) == [(event.pk, "issued", "operator")]


# -----------------------------------------------------------------------------
# Retry queue
# -----------------------------------------------------------------------------
def _request_row(request):
    return CouponIssueRequest.objects.values_list("status", "attempts", "last_error", "coupon_id").get(pk=request.pk)


def test_enqueue_once_per_reference_and_process_on_commit(member, django_capture_on_commit_callbacks):
    # given a benefit granted by a campaign
    benefit = BenefitFactory(points_price=0)
    # when the same grant is queued twice
    with django_capture_on_commit_callbacks() as callbacks:
        first = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="campaign:7")
        second = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="campaign:7")
    # then one request, processed once after commit
    assert second is None
    assert CouponIssueRequest.objects.count() == 1
    assert _request_row(first) == ("pending", 0, "", None)
    assert len(callbacks) == 1
    # when the commit hook runs (the task is eager in tests)
    callbacks[0]()
    # then
    coupon = Coupon.objects.get()
    assert _request_row(first) == ("done", 1, "", coupon.pk)
    assert (coupon.member, coupon.source, coupon.reference) == (member, "campaign", "campaign:7")


def test_processing_a_done_request_again_is_skipped(member):
    # given a request issued once
    request = coupon_issue_enqueue(benefit=BenefitFactory(), member=member, source="campaign", reference="c:1")
    assert coupon_issue_process(request_id=request.pk) == "done"
    snapshot = coupon_snapshot()
    # when the broker redelivers
    status = coupon_issue_process(request_id=request.pk)
    # then
    assert status == "skipped"
    assert coupon_snapshot() == snapshot


def test_a_business_refusal_fails_the_request_at_once(member):
    # given a sold-out benefit
    benefit = BenefitFactory(total_stock=0)
    request = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="c:1")
    # when
    status = coupon_issue_process(request_id=request.pk)
    # then
    assert status == "failed"
    assert _request_row(request) == ("failed", 1, "out_of_stock: This benefit is out of stock.", None)
    assert Coupon.objects.count() == 0
    assert issued_count(benefit) == 0


def test_a_transient_error_is_retried_with_backoff_then_fails_after_four_retries(member, monkeypatch):
    # given a request, and a coupon service that keeps failing
    benefit = BenefitFactory()
    request = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="c:1")
    start = request.next_attempt_at

    def broken(**kwargs):
        raise RuntimeError("connection reset")

    monkeypatch.setattr(coupon_services, "coupon_issue", broken)
    # when a worker tries at each due time
    seen = []
    for minutes in (0, 1, 3, 7, 15):
        early = coupon_issue_process(request_id=request.pk, now=start + timedelta(minutes=minutes, seconds=-1))
        assert early == "skipped"
        status = coupon_issue_process(request_id=request.pk, now=start + timedelta(minutes=minutes))
        request.refresh_from_db()
        seen.append((status, request.attempts, request.next_attempt_at - start))
    # then it was retried after 1, 2, 4 and 8 minutes, then failed (within 15 minutes)
    assert seen == [
        ("pending", 1, timedelta(minutes=1)),
        ("pending", 2, timedelta(minutes=3)),
        ("pending", 3, timedelta(minutes=7)),
        ("pending", 4, timedelta(minutes=15)),
        ("failed", 5, timedelta(minutes=15)),
    ]
    assert request.last_error == "RuntimeError('connection reset')"
    assert Coupon.objects.count() == 0
    assert issued_count(benefit) == 0
    # when the service is back and an operator retries it
    monkeypatch.undo()
    coupon_issue_retry(request=request)
    assert _request_row(request) == ("pending", 0, "RuntimeError('connection reset')", None)
    status = coupon_issue_process(request_id=request.pk)
    # then
    assert status == "done"
    assert _request_row(request) == ("done", 1, "", Coupon.objects.get().pk)


def test_sweep_processes_due_pending_requests_only(member):
    # given one due request, one waiting for its next attempt, and one failed
    benefit = BenefitFactory()
    now = timezone.now()
    due = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="c:1")
    waiting = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="c:2")
    failed = coupon_issue_enqueue(benefit=benefit, member=member, source="campaign", reference="c:3")
    CouponIssueRequest.objects.filter(pk=waiting.pk).update(next_attempt_at=now + timedelta(minutes=5))
    CouponIssueRequest.objects.filter(pk=failed.pk).update(status="failed", attempts=5, last_error="x")
    # when
    processed = coupon_issue_sweep(now=now + timedelta(seconds=1))
    # then
    assert processed == 1
    assert _request_row(due) == ("done", 1, "", Coupon.objects.get(reference="c:1").pk)
    assert _request_row(waiting) == ("pending", 0, "", None)
    assert _request_row(failed) == ("failed", 5, "x", None)


# -----------------------------------------------------------------------------
# Tier privileges
# -----------------------------------------------------------------------------
def test_upgrade_to_gold_grants_the_gold_privileges_once_per_month(
    store, terminal, member, django_capture_on_commit_callbacks
):
    # given a monthly gift of gold members and one of platinum members
    gift = BenefitFactory(name="金卡月礼", kind="tier_privilege", points_price=0, granted_by_tiers=["gold"])
    BenefitFactory(name="白金月礼", kind="tier_privilege", points_price=0, granted_by_tiers=["platinum"])
    silver = MemberFactory()
    # when a ¥5000 purchase makes the member gold (the queued issue runs after commit)
    with django_capture_on_commit_callbacks(execute=True):
        result = purchase_record(
            store=store,
            terminal=terminal,
            receipt_no="R-1",
            amount=Decimal("5000.00"),
            paid_at=T,
            now=T,
            identified=by_number(member),
        )
    # then one gold gift was issued for March
    assert (result.tier_changed, result.tier.code) == (True, "gold")
    coupon = Coupon.objects.get()
    assert (coupon.benefit, coupon.member, coupon.source, coupon.reference) == (
        gift,
        member,
        "tier_privilege",
        "tier:2026-03:gold",
    )
    request = CouponIssueRequest.objects.get()
    assert _request_row(request) == ("done", 1, "", coupon.pk)
    # when the monthly grant runs later in March, twice, and the upgrade grant is repeated
    assert tier_privileges_grant_monthly(at=local(2026, 3, 31, 23, 59)) == 0
    assert tier_privileges_grant_monthly(at=local(2026, 3, 31, 23, 59)) == 0
    member.refresh_from_db()
    assert tier_privileges_grant(member=member, at=T + timedelta(days=1)) == 0
    # then nothing more was queued
    assert CouponIssueRequest.objects.count() == 1
    # when it runs just after local midnight on 1 April (still 31 March in UTC)
    with django_capture_on_commit_callbacks(execute=True):
        queued = tier_privileges_grant_monthly(at=local(2026, 4, 1, 0, 30))
    again = tier_privileges_grant_monthly(at=local(2026, 4, 1, 0, 30))
    # then April's gift is issued once; silver members get nothing
    assert (queued, again) == (1, 0)
    assert sorted(Coupon.objects.values_list("member_id", "reference")) == [
        (member.pk, "tier:2026-03:gold"),
        (member.pk, "tier:2026-04:gold"),
    ]
    assert not Coupon.objects.filter(member=silver).exists()
    assert issued_count(gift) == 2


def test_monthly_grant_skips_frozen_members(member):
    # given a frozen gold member
    BenefitFactory(kind="tier_privilege", points_price=0, granted_by_tiers=["gold"])
    member_in_tier(member, "gold", since=T - timedelta(days=40))
    member_freeze(member=member, by_user=None, reason="fraud check")
    # when
    queued = tier_privileges_grant_monthly(at=T)
    # then
    assert queued == 0
    assert CouponIssueRequest.objects.count() == 0
