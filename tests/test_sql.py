"""loyalty/sql.py: the hot paths' SQL built once gives what the ORM gives."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, connection, models, transaction
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext

from campaigns.models import Coupon, CouponEvent
from loyalty.sql import (
    Write,
    _prepared_text,
    execute,
    insert,
    insert_pair,
    insert_write,
    next_id_column,
    select_one,
    select_one_with,
    together,
)
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


def test_select_one_finds_nothing_for_an_id_out_of_the_columns_range(member: Member) -> None:
    assert select_one(Member, pk=2**70) is None
    assert select_one(Member, tier=-(2**40)) is None


def test_select_one_with_reads_extra_columns_of_the_row_in_the_same_statement(member: Member) -> None:
    PointsAccount.objects.update_or_create(member=member, defaults={"balance": 42})
    extra = "(SELECT balance FROM points_pointsaccount WHERE member_id = t0.id), %s::int * 2, t0.member_no"
    with CaptureQueriesContext(connection) as captured:
        found, values = select_one_with(Member, extra=extra, extra_params=[21], related=("tier",), phone=member.phone)
        assert found is not None
        assert found.tier.pk == member.tier_id  # cached with the rest
    assert len(captured) == 1
    assert _fields(found) == _fields(Member.objects.get(pk=member.pk))
    assert values == (42, 42, member.member_no)
    assert select_one_with(Member, extra=extra, extra_params=[1], phone="+8600000000000") == (None, ())
    assert select_one_with(Member, extra=extra, extra_params=[1], pk=2**70) == (None, ())


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


def test_insert_write_builds_the_instance_and_parameters_as_the_model_and_its_fields_would(
    member: Member, store: Any
) -> None:
    """insert_write's own constructor and its pass-through of plain ints and
    strings give what Model(**values) and each field's preparation give."""
    values = {
        "store": store, "receipt_no": "R-9", "amount": Decimal("12.30"), "member": member,
        "paid_at": member.created_at, "points_earned": 7, "lines": [{"sku": "A"}],
    }
    write, instance = insert_write(Purchase, **values)
    expected = Purchase(**values)
    assert {k: v for k, v in _fields(instance).items() if k != "created_at"} == {
        k: v for k, v in _fields(expected).items() if k != "created_at"
    }
    assert instance.member is member  # related objects cached, as the constructor does
    assert instance.store is store
    fields = [f for f in Purchase._meta.local_concrete_fields if f is not Purchase._meta.auto_field]
    prepared = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    stamped = [i for i, f in enumerate(fields) if getattr(f, "auto_now_add", False)]  # "now" at each call
    assert stamped
    assert [str(v) for i, v in enumerate(write.params) if i not in stamped] == [
        str(v) for i, v in enumerate(prepared) if i not in stamped
    ]
    unsaved = Member(member_no="X")
    with pytest.raises(ValueError, match="unsaved"):
        insert_write(Purchase, **{**values, "member": unsaved})
    with pytest.raises(ValueError, match="must be a Member instance"):
        insert_write(Purchase, **{**values, "member": store})
    # A keyword that is not a concrete field goes to the model's own constructor.
    with pytest.raises(TypeError):
        insert_write(Purchase, **{**values, "no_such_field": 1})


def test_insert_pair_writes_a_row_and_its_child_in_one_statement(member: Member) -> None:
    at = member.created_at
    with CaptureQueriesContext(connection) as captured:
        entry, lot = insert_pair(
            PointsEntry,
            {"member_id": member.pk, "kind": "earn", "points": 30, "balance_after": 30, "source": "purchase",
             "created_at": at},
            PointsLot,
            "entry",
            {"member_id": member.pk, "original": 30, "remaining": 30, "earned_at": at, "expires_at": at},
        )
    assert len(captured) == 1
    stored_entry = PointsEntry.objects.get(pk=entry.pk)
    stored_lot = PointsLot.objects.get(pk=lot.pk)
    assert stored_lot.entry_id == entry.pk == lot.entry_id
    assert lot.entry is entry  # cached, as create(entry=entry) leaves it
    assert (stored_entry.points, stored_entry.balance_after, stored_entry.reason) == (30, 30, "")  # field default
    assert (stored_lot.original, stored_lot.remaining, stored_lot.pending_until) == (30, 30, None)
    assert entry._state.adding is lot._state.adding is False
    with pytest.raises(ValueError, match="not a foreign key to PointsEntry"):
        insert_pair(PointsEntry, {}, PointsLot, "member", {})


def test_together_writes_rows_that_point_to_each_other_and_reads_in_one_statement(member: Member, store: Any) -> None:
    at = member.created_at
    account = PointsAccount.objects.create(member=member, balance=0, pending=0, debt=0, updated_at=at)
    _same, (entry_id,) = select_one_with(PointsAccount, extra=next_id_column(PointsEntry), member=member.pk)
    updated: list[Any] = []
    with CaptureQueriesContext(connection) as captured:
        entry_write, entry = insert_write(
            PointsEntry, id=entry_id, member_id=member.pk, kind="earn", points=30, balance_after=30,
            source="purchase", created_at=at,
        )
        lot_write, lot = insert_write(
            PointsLot, entry=entry, member_id=member.pk, original=30, remaining=30, earned_at=at, expires_at=at
        )
        account_write = Write(
            "UPDATE points_pointsaccount SET balance = %s WHERE member_id = %s RETURNING balance",
            [30, member.pk], ("balance",), updated.append,
        )
        row = together(
            [entry_write, lot_write, account_write],
            "SELECT balance, (SELECT COUNT(*) FROM points_pointsentry WHERE member_id = %s) FROM points_pointsaccount "
            "WHERE member_id = %s",
            [member.pk, member.pk],
        )
    assert len(captured) == 1
    # The final read sees the database as before the statement; the writes are done.
    assert row == (0, 0)
    assert updated == [(30,)]
    account.refresh_from_db()
    assert account.balance == 30
    assert entry.pk == entry_id
    assert entry._state.adding is False
    stored_lot = PointsLot.objects.get(pk=lot.pk)  # the lot's key came back from its RETURNING
    assert stored_lot.entry_id == entry_id
    assert lot._state.adding is False
    assert PointsEntry.objects.get(pk=entry_id).points == 30
    # The next entry the sequence gives comes after the one taken beforehand.
    later = insert(PointsEntry, member_id=member.pk, kind="earn", points=1, balance_after=31, source="purchase",
                   created_at=at)
    assert later is not None
    assert later.pk > entry_id


def test_select_one_with_a_write_before_runs_it_once_whether_the_row_is_found_or_not(member: Member, store: Any) -> None:
    def purchase_write(receipt_no: str) -> tuple[Write, Purchase]:
        return insert_write(
            Purchase, on_conflict_do_nothing=True, store=store, receipt_no=receipt_no, amount=Decimal("10"),
            member=member, paid_at=member.created_at,
        )

    # no account: the write still runs and says what it wrote
    write, purchase = purchase_write("B-1")
    with CaptureQueriesContext(connection) as captured:
        found = select_one_with(PointsAccount, extra="1 + %s", extra_params=[1], for_update=True, before=write,
                                member=member.pk)
    assert len(captured) == 1
    assert found == (None, ())
    assert purchase.pk == Purchase.objects.get(receipt_no="B-1").pk
    # the account found, locked, its extra columns read, and the write made once
    PointsAccount.objects.create(member=member, balance=7, pending=0, debt=0, updated_at=member.created_at)
    write, purchase = purchase_write("B-2")
    account, extra = select_one_with(PointsAccount, extra="1 + %s", extra_params=[1], for_update=True, before=write,
                                     member=member.pk)
    assert account is not None
    assert (account.balance, extra) == (7, (2,))
    assert Purchase.objects.filter(receipt_no="B-2").count() == 1
    assert purchase.pk == Purchase.objects.get(receipt_no="B-2").pk
    # a write that writes nothing (the receipt is taken) comes back as None
    write, purchase = purchase_write("B-2")
    account, extra = select_one_with(PointsAccount, extra="1 + %s", extra_params=[1], for_update=True, before=write,
                                     member=member.pk)
    assert account is not None
    assert purchase.pk is None
    assert Purchase.objects.filter(receipt_no="B-2").count() == 1


def test_together_tells_a_write_that_returned_no_row_and_an_error_writes_nothing(member: Member, store: Any) -> None:
    insert(Purchase, store=store, receipt_no="T-1", amount=Decimal("10"), member=member, paid_at=member.created_at)
    again, purchase = insert_write(
        Purchase, on_conflict_do_nothing=True, store=store, receipt_no="T-1", amount=Decimal("5"), member=member,
        paid_at=member.created_at,
    )
    results: list[Any] = []
    none_updated = Write("UPDATE points_purchase SET amount = 1 WHERE id = %s RETURNING 1", [-1], ("1",), results.append)
    assert together([again, none_updated]) == ()
    assert results == [None]  # no row: None, not a row of NULLs
    assert purchase.pk is None
    assert purchase._state.adding is True
    assert Purchase.objects.get(receipt_no="T-1").amount == Decimal("10")
    # A lot that breaks its check constraint: the statement fails whole.
    bad, _lot = insert_write(
        PointsLot, entry_id=1, member_id=member.pk, original=0, remaining=0, earned_at=member.created_at,
        expires_at=member.created_at,
    )
    fresh, _purchase = insert_write(
        Purchase, store=store, receipt_no="T-2", amount=Decimal("5"), member=member, paid_at=member.created_at
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        together([fresh, bad])
    assert not Purchase.objects.filter(receipt_no="T-2").exists()
    with pytest.raises(ValueError, match="at least one write"):
        together([], "SELECT 1")


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


# -----------------------------------------------------------------------------
# execute(): prepared once per connection
# -----------------------------------------------------------------------------
def _prepared_here() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def test_execute_prepares_once_per_connection_and_counts_only_the_execute(settings: Any) -> None:
    settings.LOYALTY_SQL_PREPARE = True
    sql = "SELECT %(a)s::int + %(b)s::int, 'x%%y', %(a)s::int"
    name = _prepared_text(sql)[0]
    with CaptureQueriesContext(connection) as captured, connection.cursor() as cursor:
        execute(cursor, sql, {"b": 2, "a": 40})
        first = cursor.fetchone()
        execute(cursor, sql, {"a": 1, "b": 1})
        second = cursor.fetchone()
    assert first == (42, "x%y", 40)
    assert second == (2, "x%y", 1)
    assert [q["sql"].split(" (")[0] for q in captured.captured_queries] == [f"EXECUTE {name}"] * 2
    assert name in _prepared_here()


@pytest.mark.django_db(transaction=True)
def test_a_new_server_session_prepares_again(settings: Any) -> None:
    settings.LOYALTY_SQL_PREPARE = True
    sql = "SELECT %s::int * 2"
    with connection.cursor() as cursor:
        execute(cursor, sql, [21])
        assert cursor.fetchone() == (42,)
    connection.close()  # e.g. CONN_MAX_AGE passed, or the server restarted
    with connection.cursor() as cursor:
        assert _prepared_text(sql)[0] not in _prepared_here()
        execute(cursor, sql, [4])
        assert cursor.fetchone() == (8,)
    assert _prepared_text(sql)[0] in _prepared_here()


def test_execute_without_preparing_when_turned_off(settings: Any) -> None:
    settings.LOYALTY_SQL_PREPARE = False
    sql = "SELECT %s::int + 1 AS not_prepared"
    with CaptureQueriesContext(connection) as captured, connection.cursor() as cursor:
        execute(cursor, sql, [1])
        assert cursor.fetchone() == (2,)
    assert captured.captured_queries[0]["sql"] == "SELECT 1::int + 1 AS not_prepared"
    assert _prepared_text(sql)[0] not in _prepared_here()


def test_execute_refuses_mixed_placeholders_and_a_wrong_count() -> None:
    with pytest.raises(ValueError, match="not both"):
        _prepared_text("SELECT %s, %(a)s")
    with connection.cursor() as cursor, pytest.raises(ValueError, match="2 parameters expected, 1 given"):
        execute(cursor, "SELECT %s::int, %s::int", [1])


def test_the_hot_paths_run_prepared(terminal_client: Any, member: Member, settings: Any) -> None:
    """Identify: every statement after the first of each kind is an EXECUTE."""
    from members.selectors import member_code_current

    settings.LOYALTY_SQL_PREPARE = True
    code, _ = member_code_current(member=member)
    assert terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json").status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
    assert response.status_code == 200
    # The key, then the member with the till summary in one statement.
    assert [q["sql"][:8] for q in captured.captured_queries] == ["EXECUTE "] * 2


@pytest.mark.django_db(transaction=True)  # the API's durable transaction is a real one
def test_a_purchase_at_the_till_makes_no_savepoint(terminal_client: Any, member: Member, settings: Any) -> None:
    """The API's durable transaction is the only one: an error rolls it back whole."""
    # The general path (the one-statement purchase has no transaction: tests/points/test_till.py)
    settings.LOYALTY_TILL_ONE_STATEMENT = False
    code = member.member_no
    with CaptureQueriesContext(connection) as captured:
        response = terminal_client.post(
            "/api/v1/terminal/purchases", {"member": code, "receipt_no": "S-1", "amount": "88.00"}, format="json"
        )
    assert response.status_code == 201, response.content
    statements = [q["sql"] for q in captured.captured_queries]
    assert not [sql for sql in statements if "SAVEPOINT" in sql]
    # Once the member has an account: the key; BEGIN; the member; the account
    # lock with the purchase's insert, the campaign and webhook set-up and the
    # entry's key (one statement); the entry, its lot, the message, the
    # purchase's points and the balances with the qualifying spend (one
    # statement); COMMIT.
    with CaptureQueriesContext(connection) as captured:
        response = terminal_client.post(
            "/api/v1/terminal/purchases", {"member": code, "receipt_no": "S-1b", "amount": "12.00"}, format="json"
        )
    assert response.status_code == 201, response.content
    statements = [q["sql"] for q in captured.captured_queries]
    # (then the message is sent: its own transaction, eager in tests)
    assert statements.index("COMMIT") == 5, "\n".join(sql[:100] for sql in statements)
    # and a purchase refused after its row was inserted (more points than the member has) leaves nothing
    from members.selectors import member_code_current

    scanned, _ = member_code_current(member=member)
    response = terminal_client.post(
        "/api/v1/terminal/purchases",
        {"member": scanned, "receipt_no": "S-2", "amount": "88.00", "points_to_use": 1000},
        format="json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "insufficient_points"
    assert not Purchase.objects.filter(receipt_no="S-2").exists()
    assert PointsEntry.objects.filter(member=member).count() == 2  # the first two purchases' earn


@pytest.mark.django_db(transaction=True)
def test_the_in_transaction_services_refuse_to_run_in_autocommit(member: Member, store: Any) -> None:
    from campaigns.services.coupons import benefit_exchange_in_transaction
    from points.services import purchase_record_in_transaction

    with pytest.raises(RuntimeError, match="needs a durable transaction"):
        purchase_record_in_transaction(store=store, terminal=None, receipt_no="A-1", amount=Decimal("1"))
    with pytest.raises(RuntimeError, match="needs a durable transaction"):
        benefit_exchange_in_transaction(benefit=None, member=member)  # type: ignore[arg-type]
    assert not Purchase.objects.exists()


def test_select_one_keeps_the_row_when_a_relation_below_a_missing_one_is_not_null(member: Member) -> None:
    """referrer is nullable, the referrer's tier is not: the member without a referrer is still found."""
    found = select_one(Member, related=("referrer__tier",), pk=member.pk)
    assert found is not None
    assert found.pk == member.pk
    assert found.referrer is None


def test_select_one_gives_field_values_as_the_orm_does(store: Any) -> None:
    """A JSONField's value is parsed (its from_db_value), not the database's text."""
    from campaigns.models import WebhookEndpoint

    endpoint = WebhookEndpoint.objects.create(
        name="ERP", url="https://erp.example/hook", secret="whsec_x", events=["points_changed"]
    )
    found = select_one(WebhookEndpoint, pk=endpoint.pk)
    assert found is not None
    assert found.events == ["points_changed"]
    assert _fields(found) == _fields(WebhookEndpoint.objects.get(pk=endpoint.pk))


@pytest.mark.django_db(transaction=True)
def test_a_statement_the_server_no_longer_has_fails_once_then_is_prepared_again(settings: Any) -> None:
    from django.db import DatabaseError, transaction

    settings.LOYALTY_SQL_PREPARE = True
    sql = "SELECT %s::int + 100"
    with connection.cursor() as cursor:
        execute(cursor, sql, [1])
        assert cursor.fetchone() == (101,)
        cursor.execute(f"DEALLOCATE {_prepared_text(sql)[0]}")  # as DISCARD ALL or a pooler would
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        execute(cursor, sql, [2])
    with connection.cursor() as cursor:
        execute(cursor, sql, [3])
        assert cursor.fetchone() == (103,)


@pytest.mark.django_db(transaction=True)
def test_the_in_transaction_services_refuse_a_plain_atomic_block(member: Member, store: Any) -> None:
    """Inside atomic() a caller could catch the error and commit half a purchase: only a durable block will do."""
    from django.db import transaction

    from points.services import purchase_record_in_transaction

    with transaction.atomic(), pytest.raises(RuntimeError, match="needs a durable transaction"):
        purchase_record_in_transaction(store=store, terminal=None, receipt_no="A-2", amount=Decimal("1"))
    assert not Purchase.objects.exists()


def test_a_draw_over_many_lots_uses_one_statement_shape(member: Member, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from points.models import PointsAllocation
    from points.services import Refs, points_credit, points_debit

    settings.LOYALTY_SQL_PREPARE = True
    now = timezone.now()
    for days in (5, 4, 3, 2):
        points_credit(member=member, points=10, kind=PointsEntry.Kind.ADJUST, at=now - timedelta(days=days),
                      refs=Refs(source=PointsEntry.Source.OPERATOR, reason="t"))
    before = len(_prepared_here())
    one = points_debit(member=member, points=5, kind=PointsEntry.Kind.REDEEM, refs=Refs(source=PointsEntry.Source.OPERATOR, reason="t"))
    after_one = len(_prepared_here())
    three = points_debit(member=member, points=25, kind=PointsEntry.Kind.REDEEM, refs=Refs(source=PointsEntry.Source.OPERATOR, reason="t"))
    assert len(_prepared_here()) == after_one >= before  # three lots: no new statement
    assert list(PointsAllocation.objects.filter(entry=one).values_list("points", flat=True)) == [-5]
    assert sorted(PointsAllocation.objects.filter(entry=three).values_list("points", flat=True)) == [-10, -10, -5]
    assert PointsLot.objects.filter(member=member, remaining__gt=0).count() == 1


def test_the_till_works_the_same_without_prepared_statements(terminal_client: Any, member: Member, settings: Any) -> None:
    """LOYALTY_SQL_PREPARE=0 (behind a pooler in transaction mode): plain statements, same answers."""
    from members.selectors import member_code_current

    settings.LOYALTY_SQL_PREPARE = False
    code, _ = member_code_current(member=member)
    with CaptureQueriesContext(connection) as captured:
        identified = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
        bought = terminal_client.post(
            "/api/v1/terminal/purchases", {"member": code, "receipt_no": "NP-1", "amount": "50.00"}, format="json"
        )
    assert identified.status_code == 200, identified.content
    assert bought.status_code == 201, bought.content
    assert bought.json()["points_earned"] == 50
    assert not [q for q in captured.captured_queries if q["sql"].startswith(("EXECUTE", "PREPARE"))]
    assert PointsAccount.objects.get(member=member).balance == 50
