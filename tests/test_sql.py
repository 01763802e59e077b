"""loyalty/sql.py: the hot paths' SQL built once gives what the ORM gives."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, models
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext

from campaigns.models import Coupon, CouponEvent
from loyalty.sql import insert, select_one
from members.models import Member, MemberToken, Terminal, TerminalAPIKey, Tier
from points.models import PointsAccount, PointsEntry, PointsLot, Purchase

pytestmark = pytest.mark.django_db


def _fields(instance: models.Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_select_one_equals_the_orm_with_related_rows_cached(member: Member) -> None:
    expected = Member.objects.select_related("tier").get(pk=member.pk)
    with CaptureQueriesContext(connection) as captured:
        found = select_one(Member, related=("tier",), member_no=member.member_no)
        assert found is not None
        tier = found.tier  # cached: no second query
    assert len(captured) == 1
    assert _fields(found) == _fields(expected)
    assert _fields(tier) == _fields(expected.tier)
    assert found._state.adding is False
    assert found._state.db == "default"
    found.name = "改名"
    found.save(update_fields=["name"])  # an ordinary instance: saves as one
    assert Member.objects.get(pk=member.pk).name == "改名"


def test_select_one_follows_two_levels(terminal_with_key: tuple[Terminal, str]) -> None:
    terminal, key = terminal_with_key
    prefix = key.partition(".")[0]
    with CaptureQueriesContext(connection) as captured:
        api_key = select_one(TerminalAPIKey, related=("terminal__store",), prefix=prefix, revoked=False)
        assert api_key is not None
        assert api_key.terminal.pk == terminal.pk
        assert api_key.terminal.store.code == terminal.store.code
    assert len(captured) == 1
    assert api_key.is_valid(key)
    assert select_one(TerminalAPIKey, prefix=prefix, revoked=True) is None
    assert select_one(TerminalAPIKey, prefix="nope") is None


def test_select_one_is_null_filter_and_a_missing_nullable_relation(member: Member) -> None:
    from members.services import member_token_issue

    token, _raw = member_token_issue(member=member)
    found = select_one(MemberToken, related=("member__tier",), prefix=token.prefix, revoked_at=None)
    assert found is not None
    assert found.member.tier.pk == member.tier_id
    MemberToken.objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert select_one(MemberToken, prefix=token.prefix, revoked_at=None) is None
    # registration_store is a nullable key: a member without one gets None, not an empty Store.
    Member.objects.filter(pk=member.pk).update(registration_store=None)
    found_member = select_one(Member, related=("registration_store",), pk=member.pk)
    assert found_member is not None
    assert found_member.registration_store is None


def test_select_one_refuses_reverse_relations() -> None:
    with pytest.raises(ValueError, match="forward foreign keys"):
        select_one(Tier, related=("members",), code="silver")


@pytest.mark.django_db(transaction=True)
def test_select_one_for_update_locks_the_row(member: Member) -> None:
    """A second transaction's lock waits until the first commits."""
    from points.locks import account_lock

    account_lock(member)  # create the account
    order: list[str] = []
    locked = threading.Event()

    def second() -> None:
        from django.db import connection as thread_connection
        from django.db import transaction

        try:
            locked.wait(5)
            with transaction.atomic():
                select_one(PointsAccount, for_update=True, member=member.pk)
                order.append("second")
        finally:
            thread_connection.close()

    from django.db import transaction

    thread = threading.Thread(target=second)
    thread.start()
    with transaction.atomic():
        assert select_one(PointsAccount, for_update=True, member=member.pk) is not None
        locked.set()
        thread.join(0.5)  # blocked on the lock
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]


def test_insert_equals_create_with_defaults_and_auto_now(member: Member, store: Any) -> None:
    purchase = insert(
        Purchase, store=store, receipt_no="R-1", amount=Decimal("88.50"), member=member, paid_at=member.created_at
    )
    assert purchase is not None
    assert purchase.pk
    stored = Purchase.objects.get(pk=purchase.pk)
    assert stored.amount == Decimal("88.50")
    assert stored.member_id == member.pk
    assert stored.lines == []
    assert stored.points_earned == 0
    assert stored.created_at is not None  # auto_now_add, set by the field
    assert purchase._state.adding is False


def test_insert_on_conflict_returns_none_and_writes_nothing(member: Member, store: Any) -> None:
    first = insert(
        Purchase, store=store, receipt_no="R-2", amount=Decimal("10"), member=member, paid_at=member.created_at
    )
    again = insert(
        Purchase,
        on_conflict_do_nothing=True,
        store=store,
        receipt_no="R-2",
        amount=Decimal("99"),
        paid_at=member.created_at,
    )
    assert first is not None
    assert again is None
    assert Purchase.objects.filter(store=store, receipt_no="R-2").count() == 1


def test_the_models_written_here_have_no_signal_receivers() -> None:
    """insert() sends no signals: adding a receiver to these models must come with a change here."""
    for model in (Purchase, PointsEntry, PointsLot, PointsAccount, Coupon, CouponEvent):
        assert not pre_save.has_listeners(model), model
        assert not post_save.has_listeners(model), model
