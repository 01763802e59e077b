"""Outbound webhooks against a real local HTTP server: signature, stable event
id across retries, backoff, subscriptions, transactions, payloads, admin."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import WebhookDelivery, WebhookEndpoint
from campaigns.services.coupons import coupon_write_off
from campaigns.services.webhooks import (
    webhook_deliver,
    webhook_emit,
    webhook_member_enrolled,
    webhook_points_changed,
    webhook_signature,
    webhook_signature_verify,
    webhook_tier_changed,
    webhooks_deliver_due,
    webhooks_points_changed_many,
)
from campaigns.tasks_messaging import webhook_deliver_task
from loyalty.roles import AUDITOR, MARKETING, OPERATOR
from members.models import Tier
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.campaigns.test_notifications import FakeServer, fake_http_server
from tests.points.factories import buy

pytestmark = pytest.mark.django_db

SECRET = "whsec_test-secret-0123456789abcdef"


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    with fake_http_server() as fake:
        yield fake


def _endpoint(url: str, *, events: list[str] | None = None, active: bool = True, name: str = "ERP") -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(name=name, url=url, secret=SECRET, events=events or [], is_active=active)


def _row(delivery: WebhookDelivery) -> tuple[Any, ...]:
    return WebhookDelivery.objects.values_list(
        "status", "attempts", "last_status_code", "next_attempt_at", "delivered_at", "last_error"
    ).get(pk=delivery.pk)


def _verified(request: Any, secret: str = SECRET) -> bool:
    return webhook_signature_verify(
        secret=secret,
        body=request.body,
        timestamp=request.headers["x-loyalty-timestamp"],
        signature=request.headers["x-loyalty-signature"],
    )


# -----------------------------------------------------------------------------
# Signature and the request
# -----------------------------------------------------------------------------
def test_a_delivery_is_signed_with_the_endpoint_secret(fake_server, django_capture_on_commit_callbacks):
    # given an endpoint subscribed to every event
    endpoint = _endpoint(fake_server.url)
    # when an event is emitted and the transaction commits
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = webhook_emit(event="tier_changed", payload={"member_no": "800000001", "to": "gold"})
    # then one signed POST with the documented headers and body
    (request,) = fake_server.requests
    headers, body = request.headers, request.json()
    assert headers["x-loyalty-event"] == "tier_changed"
    assert headers["x-loyalty-event-id"] == str(delivery.event_id)
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert body == {
        "id": str(delivery.event_id),
        "event": "tier_changed",
        "created_at": body["created_at"],
        "data": {"member_no": "800000001", "to": "gold"},
    }
    assert uuid.UUID(body["id"]).version == 4
    # the scheme: sha256=HMAC(secret, "<timestamp>.<raw body>")
    expected = webhook_signature(secret=SECRET, timestamp=headers["x-loyalty-timestamp"], body=request.body)
    assert headers["x-loyalty-signature"] == expected
    assert expected.startswith("sha256=")
    assert len(expected) == len("sha256=") + 64
    assert _verified(request)
    assert not _verified(request, secret="another-secret")
    assert not webhook_signature_verify(
        secret=SECRET,
        body=request.body.replace(b"gold", b"plat"),
        timestamp=headers["x-loyalty-timestamp"],
        signature=headers["x-loyalty-signature"],
    )
    # and a stale timestamp is refused (replays)
    assert not webhook_signature_verify(
        secret=SECRET,
        body=request.body,
        timestamp=headers["x-loyalty-timestamp"],
        signature=headers["x-loyalty-signature"],
        now=int(headers["x-loyalty-timestamp"]) + 301,
    )
    assert _row(delivery)[:3] == ("delivered", 1, 200)
    assert endpoint.deliveries.count() == 1


def test_any_2xx_marks_the_delivery_delivered(fake_server):
    _endpoint(fake_server.url)
    fake_server.default_status = 204
    (delivery,) = webhook_emit(event="member_enrolled", payload={"member_no": "1"})
    now = timezone.now()
    assert webhook_deliver(delivery_id=delivery.pk, now=now) == "delivered"
    status, attempts, code, _, delivered_at, error = _row(delivery)
    assert (status, attempts, code, delivered_at, error) == ("delivered", 1, 204, now, "")


def test_after_a_500_the_retry_carries_the_same_event_id_and_body(fake_server, django_capture_on_commit_callbacks):
    # given an endpoint that fails once, then accepts
    _endpoint(fake_server.url)
    fake_server.statuses = [500]
    # when the event is emitted (first attempt after commit)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = webhook_emit(event="points_changed", payload={"member_no": "8001", "points": 128})
    status, attempts, code, next_attempt_at, _, error = _row(delivery)
    assert (status, attempts, code) == ("pending", 1, 500)
    assert error.startswith("HTTP 500: ")
    # then the sweep does not retry before the backoff, and retries once it is due
    assert webhooks_deliver_due(now=next_attempt_at - timedelta(seconds=1)) == {}
    assert webhooks_deliver_due(now=next_attempt_at) == {"delivered": 1}
    first, second = fake_server.requests
    assert first.headers["x-loyalty-event-id"] == second.headers["x-loyalty-event-id"] == str(delivery.event_id)
    assert first.body == second.body
    assert (first.headers["x-loyalty-delivery-attempt"], second.headers["x-loyalty-delivery-attempt"]) == ("1", "2")
    assert _verified(first)
    assert _verified(second)
    assert _row(delivery)[:3] == ("delivered", 2, 200)


def test_failures_back_off_then_fail_after_the_last_attempt(fake_server, settings):
    # given an endpoint that always answers 503, and 4 attempts allowed
    settings.LOYALTY_WEBHOOK_MAX_ATTEMPTS = 4
    _endpoint(fake_server.url)
    fake_server.default_status = 503
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    # when the sweep runs whenever it is due
    now, waits = timezone.now(), []
    for _ in range(3):
        assert webhooks_deliver_due(now=now) == {"pending": 1}
        due = _row(delivery)[3]
        waits.append(due - now)
        now = due
    assert webhooks_deliver_due(now=now) == {"failed": 1}
    # then
    assert waits == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert _row(delivery)[:3] == ("failed", 4, 503)
    assert len(fake_server.requests) == 4
    assert len({request.headers["x-loyalty-event-id"] for request in fake_server.requests}) == 1
    assert webhooks_deliver_due(now=now + timedelta(days=1)) == {}


def test_an_unreachable_endpoint_is_retried(fake_server):
    # given an endpoint whose server is gone
    url = fake_server.url
    fake_server.httpd.shutdown()
    fake_server.httpd.server_close()
    _endpoint(url)
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    # when
    assert webhook_deliver(delivery_id=delivery.pk) == "pending"
    # then
    status, attempts, code, _, _, error = _row(delivery)
    assert (status, attempts, code) == ("pending", 1, None)
    assert error.startswith("Endpoint unreachable: ")


def test_only_http_and_https_urls_are_delivered_to(db):
    _endpoint("ftp://erp.example.com/hook")
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    assert webhook_deliver(delivery_id=delivery.pk) == "failed"
    assert _row(delivery)[:3] == ("failed", 1, None)
    assert _row(delivery)[5] == "Only http and https URLs are allowed."


def test_a_delivered_event_is_never_posted_again_when_the_task_runs_twice(fake_server):
    _endpoint(fake_server.url)
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    first = webhook_deliver_task.delay(delivery.pk).get()
    second = webhook_deliver_task.delay(delivery.pk).get()
    assert (first, second) == ("delivered", None)
    assert len(fake_server.requests) == 1


# -----------------------------------------------------------------------------
# Subscriptions and transactions
# -----------------------------------------------------------------------------
def test_only_active_subscribed_endpoints_get_the_event(fake_server, django_capture_on_commit_callbacks):
    # given an endpoint for every event, one only for tier changes, and a disabled one
    everything = _endpoint(fake_server.url + "/all", name="ERP")
    tiers_only = _endpoint(fake_server.url + "/tiers", events=["tier_changed"], name="CRM")
    disabled = _endpoint(fake_server.url + "/off", active=False, name="Old")
    # when points change
    with django_capture_on_commit_callbacks(execute=True):
        deliveries = webhook_emit(event="points_changed", payload={"n": 1})
    # then only the first endpoint got it
    assert [delivery.endpoint_id for delivery in deliveries] == [everything.pk]
    assert [request.path for request in fake_server.requests] == ["/hook/all"]
    assert not tiers_only.deliveries.exists()
    assert not disabled.deliveries.exists()
    # and a tier change goes to both active endpoints, with one event id
    with django_capture_on_commit_callbacks(execute=True):
        both = webhook_emit(event="tier_changed", payload={"n": 2})
    assert sorted(delivery.endpoint_id for delivery in both) == [everything.pk, tiers_only.pk]
    assert len({delivery.event_id for delivery in both}) == 1
    assert sorted(request.path for request in fake_server.requests[1:]) == ["/hook/all", "/hook/tiers"]


def test_nothing_is_emitted_when_the_change_rolls_back(fake_server, django_capture_on_commit_callbacks):
    _endpoint(fake_server.url)

    def change_that_fails() -> None:
        with transaction.atomic():
            webhook_emit(event="points_changed", payload={"n": 1})
            raise RuntimeError("the purchase failed")

    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(RuntimeError):
        change_that_fails()
    assert callbacks == []
    assert not WebhookDelivery.objects.exists()
    assert fake_server.requests == []


def test_an_endpoint_disabled_before_delivery_fails_its_pending_deliveries(fake_server):
    endpoint = _endpoint(fake_server.url)
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
    assert webhook_deliver(delivery_id=delivery.pk) == "failed"
    assert _row(delivery)[5] == "The endpoint is disabled."
    assert fake_server.requests == []


def test_unknown_events_are_a_programming_error(db):
    with pytest.raises(ValueError, match="unknown webhook event"):
        webhook_emit(event="points_changd", payload={})


# -----------------------------------------------------------------------------
# Payloads of the producers
# -----------------------------------------------------------------------------
def test_points_changed_carries_the_entry_without_personal_data(member, store, terminal, fake_server):
    _endpoint(fake_server.url, events=["points_changed"])
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-88", amount="128.00", at=timezone.now())
    entry = result.purchase.entries.get(kind="earn")
    # the purchase emitted it itself (wired into the ledger's entry writer)
    delivery = WebhookDelivery.objects.get(event="points_changed")
    data = delivery.payload["data"]
    assert {
        key: data[key] for key in ("member_no", "kind", "points", "balance_after", "source", "store", "receipt_no")
    } == {
        "member_no": member.member_no,
        "kind": "earn",
        "points": 128,
        "balance_after": 128,
        "source": "purchase",
        "store": "SH001",
        "receipt_no": "R-88",
    }
    assert "13812345678" not in json.dumps(delivery.payload, ensure_ascii=False)
    assert "王小明" not in json.dumps(delivery.payload, ensure_ascii=False)
    # the batch form: one event (and event id) per entry
    assert webhooks_points_changed_many(entry_ids=[entry.pk]) == 1
    assert WebhookDelivery.objects.filter(event="points_changed").values("event_id").distinct().count() == 2


def test_a_purchase_reads_the_subscriptions_with_its_account_lock(member, store, terminal, fake_server):
    """The till asks for the points_changed endpoints in its account-lock
    statement: the same endpoints get the event as when each entry asks."""
    from campaigns.services import webhooks

    ledger = _endpoint(fake_server.url + "/ledger", events=["points_changed"], name="ERP")
    _endpoint(fake_server.url + "/tiers", events=["tier_changed"], name="CRM")
    _endpoint(fake_server.url + "/off", active=False, name="Old")
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-9", amount="50.00", at=timezone.now())
    assert result.purchase.points_earned == 50
    deliveries = list(WebhookDelivery.objects.filter(event="points_changed"))
    assert [delivery.endpoint_id for delivery in deliveries] == [ledger.pk]
    assert deliveries[0].payload["data"]["points"] == 50
    assert webhooks._known.get() is None  # the purchase's answer does not outlive it
    # an endpoint added afterwards gets the next purchase's event
    later = _endpoint(fake_server.url + "/later", events=["points_changed"], name="BI")
    buy(store=store, terminal=terminal, member=member, receipt_no="R-10", amount="20.00", at=timezone.now())
    assert sorted(
        WebhookDelivery.objects.filter(event="points_changed", payload__data__receipt_no="R-10").values_list(
            "endpoint_id", flat=True
        )
    ) == [ledger.pk, later.pk]


def test_no_endpoint_costs_one_query(member, store, terminal, django_assert_num_queries):
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="10.00", at=timezone.now())
    entry = result.purchase.entries.get(kind="earn")
    with django_assert_num_queries(1):
        assert webhook_points_changed(entry) == []
    with django_assert_num_queries(1):
        assert webhook_emit(event="tier_changed", payload={"member_no": member.member_no}) == []


def test_tier_enrolment_and_write_off_payloads(member, store, terminal, fake_server):
    _endpoint(fake_server.url)
    silver, gold = Tier.objects.get(code="silver"), Tier.objects.get(code="gold")
    (tier,) = webhook_tier_changed(member, silver, gold, reason="upgrade")
    assert webhook_tier_changed(member, None, silver) == []
    (enrolled,) = webhook_member_enrolled(member)
    coupon = coupon_give(BenefitFactory(name="满100减10元券"), member, at=timezone.now())
    coupon = coupon_write_off(code=coupon.code, store=store, terminal=terminal, receipt_no="R-9")
    from campaigns.services.webhooks import webhook_coupon_written_off

    (written_off,) = webhook_coupon_written_off(coupon)
    assert {key: tier.payload["data"][key] for key in ("member_no", "from", "to", "direction", "reason")} == {
        "member_no": member.member_no,
        "from": "silver",
        "to": "gold",
        "direction": "up",
        "reason": "upgrade",
    }
    assert enrolled.payload["data"]["registration_store"] == "SH001"
    assert "phone" not in json.dumps(enrolled.payload)
    assert {key: written_off.payload["data"][key] for key in ("code", "store", "receipt_no", "member_no")} == {
        "code": coupon.code,
        "store": "SH001",
        "receipt_no": "R-9",
        "member_no": member.member_no,
    }


# -----------------------------------------------------------------------------
# Admin
# -----------------------------------------------------------------------------
def _staff(username: str, role: str) -> Client:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def test_an_operator_adds_an_endpoint_and_sees_its_generated_secret_once(db):
    # given an operator
    client = _staff("op-hooks", OPERATOR)
    # when they add an endpoint without typing a secret
    response = client.post(
        reverse("admin:campaigns_webhookendpoint_add"),
        {
            "name": "ERP",
            "url": "https://erp.example.com/hooks",
            "events": ["points_changed", "tier_changed"],
            "is_active": "on",
            "new_secret": "",
        },
    )
    # then a strong secret was generated, shown once in a message, masked afterwards
    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_")
    assert len(endpoint.secret) > 40
    assert endpoint.events == ["points_changed", "tier_changed"]
    shown = [str(message) for message in get_messages(response.wsgi_request)]
    assert any(endpoint.secret in message for message in shown)
    first_page = client.get(response.url)  # where the message is displayed, once
    page = client.get(reverse("admin:campaigns_webhookendpoint_change", args=[endpoint.pk]))
    assert endpoint.secret in first_page.content.decode()
    assert page.status_code == 200
    assert endpoint.secret not in page.content.decode()
    assert "••••••••" + endpoint.secret[-4:] in page.content.decode()
    listing = client.get(reverse("admin:campaigns_webhookendpoint_changelist"))
    assert endpoint.secret not in listing.content.decode()


def test_endpoint_urls_must_be_http_or_https_and_marketing_cannot_edit_endpoints(db):
    operator = _staff("op-hooks", OPERATOR)
    response = operator.post(
        reverse("admin:campaigns_webhookendpoint_add"),
        {"name": "ERP", "url": "ftp://erp.example.com/hooks", "is_active": "on"},
    )
    assert response.status_code == 200
    assert "Only http and https URLs are delivered to." in response.content.decode()
    assert not WebhookEndpoint.objects.exists()
    marketing = _staff("mkt", MARKETING)
    assert marketing.get(reverse("admin:campaigns_webhookendpoint_add")).status_code == 403


def test_rotating_the_secret_shows_the_new_one_once(db):
    client = _staff("op-hooks", OPERATOR)
    endpoint = _endpoint("https://erp.example.com/hooks")
    response = client.post(
        reverse("admin:campaigns_webhookendpoint_change", args=[endpoint.pk]),
        {"name": "ERP", "url": "https://erp.example.com/hooks", "is_active": "on", "rotate_secret": "on"},
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.secret != SECRET
    assert any(endpoint.secret in str(message) for message in get_messages(response.wsgi_request))
    # and saving without rotating keeps it
    client.post(
        reverse("admin:campaigns_webhookendpoint_change", args=[endpoint.pk]),
        {"name": "ERP 2", "url": "https://erp.example.com/hooks", "is_active": "on"},
    )
    kept = endpoint.secret
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.secret) == ("ERP 2", kept)


def test_the_delivery_log_retries_a_failed_delivery_with_the_same_event_id(
    fake_server, settings, django_capture_on_commit_callbacks
):
    # given a delivery that failed
    settings.LOYALTY_WEBHOOK_MAX_ATTEMPTS = 1
    _endpoint(fake_server.url)
    fake_server.statuses = [502]
    (delivery,) = webhook_emit(event="points_changed", payload={"n": 1})
    assert webhook_deliver(delivery_id=delivery.pk) == "failed"
    client = _staff("op-hooks", OPERATOR)
    url = reverse("admin:campaigns_webhookdelivery_changelist")
    # when an operator finds it in the log and retries it
    listing = client.get(url, {"status__exact": "failed"})
    found = client.get(url, {"q": str(delivery.event_id)})
    assert list(listing.context["cl"].result_list) == [delivery]
    assert list(found.context["cl"].result_list) == [delivery]
    assert client.get(url, {"q": "not-a-uuid"}).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"action": "retry_deliveries", "_selected_action": [delivery.pk], "index": "0"})
    # then it is delivered, with the same event id
    assert response.status_code == 302
    assert _row(delivery)[:3] == ("delivered", 1, 200)
    assert [request.headers["x-loyalty-event-id"] for request in fake_server.requests] == [str(delivery.event_id)] * 2


@pytest.mark.parametrize("role", ["superuser", OPERATOR, MARKETING, AUDITOR])
def test_messaging_pages_render_for_every_role_and_never_show_a_secret(role, member):
    # given an endpoint, a delivery and a message
    from campaigns.services.notifications import message_enqueue

    endpoint = _endpoint("https://erp.example.com/hooks", events=["tier_changed"])
    (delivery,) = webhook_emit(event="tier_changed", payload={"member_no": member.member_no})
    message = message_enqueue(member=member, kind="campaign", payload={"text": "会员日"}, dedupe_key="k")
    if role == "superuser":
        user = get_user_model().objects.create_user(username="root", password="x", is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(user)
    else:
        client = _staff("someone", role)
    pages = [
        reverse("admin:campaigns_outboxmessage_changelist"),
        reverse("admin:campaigns_outboxmessage_changelist") + "?status__exact=pending&kind__exact=campaign",
        reverse("admin:campaigns_outboxmessage_change", args=[message.pk]),
        reverse("admin:campaigns_webhookendpoint_changelist"),
        reverse("admin:campaigns_webhookendpoint_change", args=[endpoint.pk]),
        reverse("admin:campaigns_webhookdelivery_changelist"),
        reverse("admin:campaigns_webhookdelivery_change", args=[delivery.pk]),
    ]
    # when / then
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert SECRET not in response.content.decode(), page
