"""The admin pages in a real browser under the Content-Security-Policy: an
operator signs in and opens the pages with widgets and scripts (member page
and its operations, adjustment form, balance explanation, campaign form with
date widgets, coupon grant, webhook delivery). The ``page`` fixture fails the
test if the browser refused anything (an inline script, style or handler
without the response's nonce).

Transactional (``live_server`` serves from another thread); the default tiers
are put back once the module is done.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from campaigns.models import WebhookDelivery, WebhookEndpoint
from campaigns.services.webhooks import webhook_ping
from members.services import member_enrol, store_get_or_create
from points.services import adjustment_request

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "operator-password-1"


@pytest.fixture(scope="module", autouse=True)
def _default_tiers_restored(django_db_blocker: Any) -> Iterator[None]:
    yield
    from django.apps import apps

    with django_db_blocker.unblock():
        importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


def test_admin_pages_run_under_the_content_security_policy(live_server, page, transactional_db):
    # given a member with an adjustment, a webhook delivery, and a superuser
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    root = get_user_model().objects.create_superuser(username="root", password=PASSWORD, email="r@example.com")
    adjustment_request(member=member, points=20, reason="goodwill", by_user=root)
    endpoint = WebhookEndpoint.objects.create(name="ERP", url="http://127.0.0.1:9/hook", secret="whsec_x")
    webhook_ping(endpoint=endpoint)
    delivery = WebhookDelivery.objects.get()
    # when the operator signs in and opens each page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    paths = [
        "/admin/members/member/",
        f"/admin/members/member/{member.pk}/change/",
        f"/admin/members/member/{member.pk}/tier/",
        "/admin/points/pointsadjustment/add/",
        f"/admin/points/pointsaccount/{member.pk}/explain/",
        "/admin/campaigns/campaign/add/",
        "/admin/campaigns/coupon/grant/",
        f"/admin/campaigns/webhookdelivery/{delivery.pk}/change/",
    ]
    statuses = {}
    for path in paths:
        response = page.goto(live_server.url + path)
        page.wait_for_load_state("load")
        statuses[path] = response.status if response else None
    # then every page rendered (and the fixture saw no CSP refusal)
    assert statuses == dict.fromkeys(paths, 200)
    # and the admin's own scripts ran: the date widget added its shortcuts
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.wait_for_selector(".datetimeshortcuts", timeout=5000)
