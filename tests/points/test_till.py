"""The till's one-statement purchase (points/till.py) against the general path.

Transactional tests (``django_db(transaction=True)``): the one-statement path
runs only outside a transaction, as a request does; inside the test
transaction every purchase takes the general path, which the rest of the
suite tests. Each differential test makes the same purchase for two members
in the same state, one through each path, and compares every row written and
the response.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns.models import Campaign, OutboxMessage, WebhookDelivery, WebhookEndpoint
from campaigns.services.webhooks import POINTS_CHANGED
from loyalty.models import IdempotencyKey
from members.models import Member, Store, TierChange
from members.selectors import member_code_current
from members.services import member_enrol, member_freeze, store_get_or_create, terminal_create
from points import till
from points.batch import ledger_check
from points.models import PointsAccount, PointsEntry, PointsLot, Purchase
from points.services import purchase_record
from tests.points.factories import by_number, clawback_debt, ledger_snapshot, member_in_tier, points_give

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    # (the default tiers a flush removed come back through conftest's _migration_data)
    till._general_until = 0.0  # an earlier test's campaign does not keep this one off the path


@pytest.fixture
def shop() -> Store:
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    return store


@pytest.fixture
def till_key(shop: Store) -> str:
    return terminal_create(store=shop, name="till-1")[1]


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def till_client(till_key: str) -> APIClient:
    return _client(till_key)


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each purchase the API recorded went through the one-statement
    path (True) or left it for the general path (False); nothing when it was
    not tried."""
    taken: list[bool] = []
    original = till.purchase_one_statement

    def spy(**kwargs: Any) -> Any:
        result = original(**kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(till, "purchase_one_statement", spy)
    return taken


def _enrol(store: Store, index: int, *, account: bool = True) -> Member:
    """A member; with ``account`` their points account made, as their first
    purchase or credit makes it (until then purchases take the general path)."""
    member, _ = member_enrol(phone=f"1381234{index:04d}", name="王小明", store=store)
    if account:
        from django.db import transaction

        from points.locks import account_lock

        with transaction.atomic():
            account_lock(member)
    return member


def _post(client: APIClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/v1/terminal/purchases", body, format="json", HTTP_ACCEPT_LANGUAGE="en", **headers)


def _written(member: Member, receipt_no: str) -> dict[str, Any]:
    """What a purchase wrote, without what differs between two members' rows
    (keys, member, receipt, times taken from the clock)."""
    purchase = Purchase.objects.get(receipt_no=receipt_no)
    entries = list(PointsEntry.objects.filter(purchase=purchase).order_by("pk"))
    lots = list(PointsLot.objects.filter(entry__in=entries).order_by("pk"))
    messages = list(OutboxMessage.objects.filter(dedupe_key=f"points_earned:purchase:{purchase.pk}"))
    account = PointsAccount.objects.get(member=member)
    payloads = []
    for message in messages:
        payload = dict(message.payload)
        assert payload.pop("entry_id") == entries[0].pk
        assert payload.pop("purchase_id") == purchase.pk
        payloads.append(payload)
    return {
        "purchase": {
            f.attname: getattr(purchase, f.attname)
            for f in Purchase._meta.concrete_fields
            if f.attname not in ("id", "receipt_no", "member_id", "created_at", "code_step")
        }
        | {"by_code": purchase.code_step is not None},
        "entries": [
            (e.kind, e.points, e.balance_after, e.source, e.store_id, e.terminal_id, e.refund_id, e.by_user_id,
             e.reason, e.reference, e.created_at)
            for e in entries
        ],
        "lots": [(lot.original, lot.remaining, lot.earned_at, lot.expires_at, lot.pending_until) for lot in lots],
        "messages": [
            (m.kind, m.channel, m.marketing, m.status, m.attempts, m.last_error, m.member_id == member.pk)
            for m in messages
        ],
        "payloads": payloads,
        "account": (account.balance, account.pending, account.debt),
        "entries_of_member": PointsEntry.objects.filter(member=member).count(),
    }


CASES = {
    "plain": {},
    "gold member": {"tier": "gold"},
    "debt below the points": {"debt": 30},
    "debt above the points": {"debt": 500},
    "debt below the points, pending days": {"debt": 30, "pending_days": 7},
    "pending days": {"settings": {"LOYALTY_POINTS_PENDING_DAYS": 7}},
    "year-end expiry": {"settings": {"LOYALTY_POINTS_EXPIRY_POLICY": "year_end"}},
    "by code": {"by_code": True},
    "paid earlier, with lines": {
        "body": {"paid_at": "past", "lines": [{"sku": "A-1", "qty": 2, "price": "64.25"}]},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_statement_writes_what_the_general_path_writes(case, shop, till_client, paths, settings):
    # given two members in the same state
    spec = CASES[case]
    for name, value in spec.get("settings", {}).items():
        setattr(settings, name, value)
    now = timezone.now()
    members = [_enrol(shop, 1), _enrol(shop, 2)]
    for member in members:
        if "tier" in spec:
            member_in_tier(member, spec["tier"], since=now - timedelta(days=30))
        points_give(member, 100, at=now - timedelta(days=3))
        if "debt" in spec:
            clawback_debt(member, shop, spec["debt"])
    if "pending_days" in spec:  # after the debt was made: its points had to be spendable
        settings.LOYALTY_POINTS_PENDING_DAYS = spec["pending_days"]
    written, answers = [], []
    # when each buys the same, the first through the general path, the second in one statement
    for index, (member, one_statement) in enumerate(zip(members, (False, True), strict=True)):
        settings.LOYALTY_TILL_ONE_STATEMENT = one_statement
        member.refresh_from_db()
        value = member_code_current(member=member)[0] if spec.get("by_code") else member.member_no
        body = {"member": value, "receipt_no": f"R-{index}", "amount": "128.50"}
        # the same payment time for both (the rows keep it); without one it is the request's time
        extra = {"paid_at": (now - timedelta(minutes=1)).isoformat(), **spec.get("body", {})}
        if extra["paid_at"] == "past":
            extra["paid_at"] = (now - timedelta(hours=5)).isoformat()
        response = _post(till_client, {**body, **extra})
        assert response.status_code == 201, response.content
        answer = response.json()
        assert answer.pop("receipt_no") == f"R-{index}"
        assert answer.pop("member_no") == member.member_no
        answers.append(answer)
        written.append(_written(member, f"R-{index}"))
    # then the second took the one-statement path (the first, switched off, did not) and
    # both wrote the same rows and answered the same
    assert paths == [False, True]
    assert written[1] == written[0]
    assert answers[1] == answers[0]
    assert answers[0]["points_earned"] > 0
    # the points reported pending are those of the lot that waits (what paid debt opened none)
    assert answers[0]["points_pending"] == sum(lot[0] for lot in written[0]["lots"] if lot[4] is not None)
    assert ledger_check().ok


def test_one_statement_purchase_is_three_statements(shop, till_client, paths):
    # given a member
    member = _enrol(shop, 1)
    from django.test.utils import CaptureQueriesContext

    # when a purchase is recorded
    with CaptureQueriesContext(connection) as queries:
        response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "88.00"})
    # then: the API key, the member, and the purchase in one statement; no BEGIN, no COMMIT
    # (what follows is the "points earned" message sent at once: Celery runs eagerly in tests)
    assert response.status_code == 201
    assert paths == [True]
    statements = [q["sql"] for q in queries.captured_queries]
    assert [sql.split()[0] for sql in statements[:4]] == ["EXECUTE", "EXECUTE", "EXECUTE", "BEGIN"]
    assert all("outbox" in sql or sql in ("BEGIN", "COMMIT") for sql in statements[4:]), statements
    assert PointsAccount.objects.get(member=member).balance == 88


def test_a_member_s_first_purchase_makes_their_account_on_the_general_path(shop, till_client, paths):
    # given a member with no points account yet
    member = _enrol(shop, 1, account=False)
    # when they buy twice
    first = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"})
    second = _post(till_client, {"member": member.member_no, "receipt_no": "R-2", "amount": "30.00"})
    # then the first went to the general path, which made the account; the second took one statement
    assert first.status_code == second.status_code == 201
    assert paths == [False, True]
    assert second.json()["balance"] == 80
    assert PointsAccount.objects.get(member=member).balance == 80
    assert ledger_check().ok


def test_a_running_campaign_sends_the_purchase_to_the_general_path(shop, till_client, paths):
    # given a x2 points campaign
    Campaign.objects.create(
        name="x2", kind=Campaign.Kind.MULTIPLIER, status=Campaign.Status.ACTIVE,
        starts_at=timezone.now() - timedelta(days=1), multiplier=Decimal("2"),
    )
    members = [_enrol(shop, 1), _enrol(shop, 2)]
    # when two purchases are recorded
    first = _post(till_client, {"member": members[0].member_no, "receipt_no": "R-1", "amount": "50.00"})
    second = _post(till_client, {"member": members[1].member_no, "receipt_no": "R-2", "amount": "50.00"})
    # then the statement wrote nothing and the general path doubled the points; the process
    # now sends purchases to the general path for a while without trying the statement
    assert paths == [False, False]
    assert till._general_until > time.monotonic()
    assert first.status_code == second.status_code == 201
    assert first.json()["points_earned"] == second.json()["points_earned"] == 100
    assert Purchase.objects.get(receipt_no="R-1").multiplier == Decimal("2")
    assert PointsEntry.objects.filter(purchase__receipt_no="R-1").count() == 1
    assert ledger_check().ok


def test_a_webhook_on_points_changed_sends_the_purchase_to_the_general_path(shop, till_client, paths):
    # given an endpoint that takes every event
    WebhookEndpoint.objects.create(name="ERP", url="http://127.0.0.1:9/hook", secret="whsec_x", events=[])
    member = _enrol(shop, 1)
    # when a purchase is recorded
    response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"})
    # then the general path wrote it, with its webhook delivery
    assert response.status_code == 201
    assert paths == [False]
    assert WebhookDelivery.objects.filter(event=POINTS_CHANGED).count() == 1
    assert PointsEntry.objects.filter(purchase__receipt_no="R-1").count() == 1


def test_a_purchase_that_reaches_a_tier_is_recorded_with_the_upgrade(shop, till_client, paths):
    # given a silver member (gold from ¥5,000 of qualifying spend)
    member = _enrol(shop, 1)
    # when a purchase of ¥6,000 is recorded
    response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "6000.00"})
    # then the statement wrote nothing and the general path upgraded the member
    assert response.status_code == 201, response.content
    assert paths == [False]
    assert response.json()["tier_changed"] is True
    assert response.json()["tier"]["code"] == "gold"
    assert TierChange.objects.filter(member=member, to_tier__code="gold").count() == 1
    assert Purchase.objects.filter(receipt_no="R-1").count() == 1


def test_a_receipt_recorded_before_is_refused_and_nothing_written(shop, till_client, paths):
    # given a recorded purchase
    member = _enrol(shop, 1)
    assert _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"}).status_code == 201
    before = ledger_snapshot()
    # when the same receipt is sent again
    response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"})
    # then 409 duplicate_receipt, from the general path, and nothing changed
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate_receipt"
    assert paths == [True, False]
    assert ledger_snapshot() == before


def test_a_member_code_serves_one_purchase_on_this_path_too(shop, till_client, paths):
    # given a member's code used for a purchase
    member = _enrol(shop, 1)
    code = member_code_current(member=member)[0]
    assert _post(till_client, {"member": code, "receipt_no": "R-1", "amount": "50.00"}).status_code == 201
    before = ledger_snapshot()
    # when it is scanned for another purchase
    response = _post(till_client, {"member": code, "receipt_no": "R-2", "amount": "50.00"})
    # then refused, nothing changed
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "code_already_used"
    assert ledger_snapshot() == before


def test_a_frozen_member_is_refused_by_the_general_path(shop, till_client, paths, django_user_model):
    # given a frozen member
    member = _enrol(shop, 1)
    operator = django_user_model.objects.create_user(username="op", is_staff=True)
    member_freeze(member=member, by_user=operator, reason="fraud check")
    before = ledger_snapshot()
    # when a purchase names them
    response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"})
    # then refused without trying the statement, nothing written
    assert response.json()["error"]["code"] == "member_frozen"
    assert paths == [False]
    assert ledger_snapshot() == before


def test_with_an_idempotency_key_the_purchase_goes_through_the_key_s_transaction(shop, till_client, paths):
    # given a member
    member = _enrol(shop, 1)
    body = {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"}
    # when the purchase is sent twice with a key
    first = _post(till_client, body, HTTP_IDEMPOTENCY_KEY="k-1")
    again = _post(till_client, body, HTTP_IDEMPOTENCY_KEY="k-1")
    # then the key's transaction recorded it once, and the retry got the same bytes
    assert paths == []
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert IdempotencyKey.objects.count() == 1
    assert PointsAccount.objects.get(member=member).balance == 50


def test_switched_off_every_purchase_takes_the_general_path(shop, till_client, paths, settings):
    settings.LOYALTY_TILL_ONE_STATEMENT = False
    member = _enrol(shop, 1)
    response = _post(till_client, {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00"})
    assert response.status_code == 201
    assert paths == [False]
    assert PointsAccount.objects.get(member=member).balance == 50


def _backend_waits_on_a_lock(timeout: float = 20) -> None:
    """Until another session of the test database waits for a row lock."""
    deadline = time.monotonic() + timeout
    with connections["default"].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no session waited for the lock")


def test_a_purchase_committed_while_the_lock_was_awaited_counts_towards_the_tier(shop, till_client, paths):
    # given a silver member (gold from ¥5,000) with a ¥3,000 purchase in flight in another transaction
    member = _enrol(shop, 1)
    from django.db import transaction

    in_flight, release, done = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def other_till() -> None:
        try:
            with transaction.atomic():
                purchase_record(
                    store=shop, terminal=None, receipt_no="R-1", amount=Decimal("3000.00"),
                    identified=by_number(Member.objects.get(pk=member.pk)),
                )
                in_flight.set()
                release.wait(timeout=30)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=other_till)
    thread.start()
    assert in_flight.wait(timeout=30)
    answers: list[Any] = []

    def this_till() -> None:
        try:
            answers.append(_post(till_client, {"member": member.member_no, "receipt_no": "R-2", "amount": "2500.00"}))
        finally:
            connections.close_all()

    second = threading.Thread(target=this_till)
    second.start()
    # when this purchase's statement waits for the account lock and the other commits meanwhile
    _backend_waits_on_a_lock()
    release.set()
    second.join(timeout=30)
    thread.join(timeout=30)
    # then its snapshot, older than the other purchase, was not trusted: the general path
    # counted both (¥5,500) and upgraded the member
    assert not failures
    assert len(answers) == 1
    assert answers[0].status_code == 201, answers[0].content
    assert paths == [False]
    assert answers[0].json()["tier_changed"] is True
    assert Member.objects.get(pk=member.pk).tier.code == "gold"
    assert ledger_check().ok


def test_concurrent_purchases_of_one_member_keep_the_ledger_exact(shop, till_key, paths):
    # given a member, and 8 tills each recording 5 purchases for them at once
    member = _enrol(shop, 1)
    amounts = [Decimal(f"{10 + n}.50") for n in range(40)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def worker(index: int) -> None:
        client = _client(till_key)
        try:
            barrier.wait(timeout=30)
            for n in range(5):
                k = index * 5 + n
                body = {"member": member.member_no, "receipt_no": f"C-{k}", "amount": str(amounts[k])}
                statuses.append(_post(client, body).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then every purchase was recorded once, by either path (one that waited for the
    # account lock leaves the statement for the general path), and the ledger adds up
    assert statuses == [201] * 40
    assert len(paths) == 40
    expected = sum(int(a) for a in amounts)
    assert PointsAccount.objects.get(member=member).balance == expected
    entries = list(PointsEntry.objects.filter(member=member).order_by("pk").values_list("points", "balance_after"))
    running = 0
    for points, balance_after in entries:
        running += points
        assert balance_after == running
    assert running == expected
    assert ledger_check().ok


def test_a_payment_time_in_the_future_is_refused_before_anything_is_written(shop, till_client, paths):
    # given a member with an account
    member = _enrol(shop, 1)
    before = ledger_snapshot()
    # when a till sends a purchase paid tomorrow
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    body = {"member": member.member_no, "receipt_no": "R-1", "amount": "50.00", "paid_at": tomorrow}
    response = _post(till_client, body)
    # then 400 invalid_paid_at, as the general path answers, and nothing written
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_paid_at"
    assert paths == []  # raised by the one-statement path before its statement
    assert ledger_snapshot() == before
