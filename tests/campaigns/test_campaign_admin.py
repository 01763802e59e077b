"""Admin of campaigns: the dry-run forecast page with the results so far, who
may see it, and the switch-on / pause / run-now actions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, CampaignGrant, Coupon
from loyalty.roles import AUDITOR, MARKETING, STORE_MANAGER
from members.models import StaffProfile
from points.batch import ledger_check
from tests.campaigns.factories import BenefitFactory, CampaignFactory, spent
from tests.points.factories import MemberFactory, buy, ledger_snapshot

pytestmark = pytest.mark.django_db


def _staff(username: str, role: str, store: Any = None) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _forecast_url(campaign: Campaign, **query: Any) -> str:
    url = reverse("admin:campaigns_campaign_forecast", args=[campaign.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def _cell(response: Any, name: str) -> str:
    html = response.content.decode()
    start = html.index(f'id="forecast-{name}">') + len(f'id="forecast-{name}">')
    return html[start : html.index("<", start)]


@pytest.fixture
def marketing(db: Any) -> Any:
    return _staff("mkt", MARKETING)


@pytest.fixture
def purchases(store: Any, terminal: Any, member: Any) -> None:
    """¥100 ten days ago and ¥50 two days ago (a silver member, x1)."""
    now = timezone.now()
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100", at=now - timedelta(days=10))
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="50", at=now - timedelta(days=2))


def test_forecast_page_shows_the_dry_run_of_the_last_weeks_and_writes_nothing(marketing, purchases):
    # given a draft double-points campaign
    campaign = CampaignFactory(status=Campaign.Status.DRAFT, starts_at=timezone.now())
    snapshot = ledger_snapshot()
    # when
    four_weeks = _client(marketing).get(_forecast_url(campaign))
    one_week = _client(marketing).get(_forecast_url(campaign, weeks=1))
    # then
    assert four_weeks.status_code == 200
    assert [_cell(four_weeks, n) for n in ("purchases", "members", "points", "coupons")] == ["2", "1", "150", "0"]
    assert [_cell(one_week, n) for n in ("purchases", "members", "points", "coupons")] == ["1", "1", "50", "0"]
    assert (four_weeks.context["weeks"], one_week.context["weeks"]) == (4, 1)
    assert ledger_snapshot() == snapshot
    assert spent(campaign) == (0, 0)
    assert CampaignGrant.objects.count() == 0


@pytest.mark.parametrize(("weeks", "used"), [("abc", 4), ("0", 1), ("-3", 1), ("53", 52), ("12", 12)])
def test_forecast_weeks_are_kept_between_1_and_52(marketing, weeks, used):
    # given
    campaign = CampaignFactory(status=Campaign.Status.DRAFT)
    # when
    response = _client(marketing).get(_forecast_url(campaign, weeks=weeks))
    # then
    assert response.status_code == 200
    assert response.context["weeks"] == used


def test_forecast_page_shows_a_coupon_grants_members_and_the_results_so_far(marketing, store):
    # given a coupon grant to everyone (three members), then run from admin
    for _ in range(3):
        MemberFactory(store=store)
    campaign = CampaignFactory(
        kind=Campaign.Kind.COUPON_GRANT,
        benefit=BenefitFactory(),
        multiplier=1,
        budget_coupons=3,
        starts_at=timezone.now() - timedelta(days=1),
    )
    before = _client(marketing).get(_forecast_url(campaign))
    _client(marketing).post(
        reverse("admin:campaigns_campaign_changelist"),
        {"action": "run_now", "_selected_action": [str(campaign.pk)], "index": "0"},
    )
    # when
    after = _client(marketing).get(_forecast_url(campaign))
    # then
    assert [_cell(before, n) for n in ("members", "coupons")] == ["3", "3"]
    assert [_cell(after, n) for n in ("members", "coupons")] == ["0", "0"]
    assert after.context["results"] == {
        "members_reached": 3,
        "points_issued": 0,
        "coupons_issued": 3,
        "coupons_written_off": 0,
        "sales_of_reached_members": Decimal("0.00"),
    }
    assert Coupon.objects.count() == 3


def test_auditor_may_see_the_forecast(purchases):
    # given
    campaign = CampaignFactory(status=Campaign.Status.DRAFT)
    # when
    response = _client(_staff("audit", AUDITOR)).get(_forecast_url(campaign))
    # then
    assert response.status_code == 200


def test_store_manager_may_not_see_the_forecast(store):
    # given a role without the campaign view permission
    campaign = CampaignFactory(status=Campaign.Status.DRAFT)
    # when
    response = _client(_staff("mgr", STORE_MANAGER, store=store)).get(_forecast_url(campaign))
    # then
    assert response.status_code == 403


def test_anonymous_is_sent_to_the_login_page(client: Client):
    # given
    campaign = CampaignFactory(status=Campaign.Status.DRAFT)
    # when
    response = client.get(_forecast_url(campaign))
    # then
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_forecast_of_an_unknown_campaign_is_404(marketing):
    # given no campaign 999999
    # when
    response = _client(marketing).get(reverse("admin:campaigns_campaign_forecast", args=[999999]))
    # then
    assert response.status_code == 404


def test_switch_on_then_pause_actions(marketing):
    # given
    campaign = CampaignFactory(status=Campaign.Status.DRAFT)
    url = reverse("admin:campaigns_campaign_changelist")
    client = _client(marketing)
    # when
    activated = client.post(url, {"action": "activate", "_selected_action": [str(campaign.pk)], "index": "0"})
    status_after_activate = Campaign.objects.get(pk=campaign.pk).status
    client.post(url, {"action": "pause", "_selected_action": [str(campaign.pk)], "index": "0"})
    # then
    assert status_after_activate == Campaign.Status.ACTIVE
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.PAUSED
    assert "1 campaigns switched on." in [str(m) for m in get_messages(activated.wsgi_request)]


def test_run_now_twice_gives_nothing_twice(marketing, store):
    # given a coupon grant to two members
    for _ in range(2):
        MemberFactory(store=store)
    campaign = CampaignFactory(
        kind=Campaign.Kind.COUPON_GRANT,
        benefit=BenefitFactory(),
        multiplier=1,
        starts_at=timezone.now() - timedelta(days=1),
    )
    url = reverse("admin:campaigns_campaign_changelist")
    client = _client(marketing)
    data = {"action": "run_now", "_selected_action": [str(campaign.pk)], "index": "0"}
    # when
    first = client.post(url, data)
    second = client.post(url, data)
    # then
    assert [str(m) for m in get_messages(first.wsgi_request)] == ["2 grants made (nothing is given twice)."]
    assert [str(m) for m in get_messages(second.wsgi_request)][-1] == "0 grants made (nothing is given twice)."
    assert Coupon.objects.count() == 2
    assert spent(campaign) == (0, 2)
    assert ledger_check().ok


def test_grants_are_read_only_in_admin(marketing, store):
    # given a grant
    MemberFactory(store=store)
    campaign = CampaignFactory(
        kind=Campaign.Kind.COUPON_GRANT,
        benefit=BenefitFactory(),
        multiplier=1,
        starts_at=timezone.now() - timedelta(days=1),
    )
    from campaigns.services.campaigns import campaign_run

    campaign_run(campaign=campaign)
    grant = CampaignGrant.objects.get()
    client = _client(_staff("root", MARKETING))
    # when
    listed = client.get(reverse("admin:campaigns_campaigngrant_changelist"))
    added = client.get(reverse("admin:campaigns_campaigngrant_add"))
    deleted = client.post(reverse("admin:campaigns_campaigngrant_delete", args=[grant.pk]), {"post": "yes"})
    # then
    assert listed.status_code == 200
    assert (added.status_code, deleted.status_code) == (403, 403)
    assert CampaignGrant.objects.count() == 1
