"""The member page at /m/ in a real (headless) Chromium against the live member API.

Assertions are on data attributes and API responses, not on wording, so they
hold in either language and whatever the translation catalogue says.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from dateutil.relativedelta import relativedelta
from django.utils import timezone, translation

from campaigns.models import Benefit, Coupon
from campaigns.services.coupons import reason_text
from members.models import Member, MemberToken, Tier
from members.selectors import member_get_by_code, member_resolve
from members.services import member_enrol, member_token_issue, store_get_or_create
from points.models import CheckIn
from points.selectors import entry_list, points_summary_get
from points.services import purchase_record

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN_KEY = "loyalty.member.token"


def _create_default_tiers() -> None:
    """silver 0 / x1.00 / 0.95, gold 5000 / x1.25 / 0.88, platinum 20000 / x1.50 / 0.75,
    from the data migration itself, so the values cannot drift from it."""
    from django.apps import apps

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


@pytest.fixture(scope="module", autouse=True)
def _default_tiers_restored(django_db_blocker: Any) -> Iterator[None]:
    """After the module's last flush, give later tests (and the kept --reuse-db
    database) their default tiers back."""
    yield
    with django_db_blocker.unblock():
        _create_default_tiers()


@pytest.fixture
def tiers(transactional_db: Any) -> None:
    # The flush that ends every transactional test empties the tiers table too.
    _create_default_tiers()
    assert list(Tier.objects.order_by("rank").values_list("code", "threshold", "earn_multiplier", "discount_rate")) == [
        ("silver", Decimal("0.00"), Decimal("1.00"), Decimal("0.95")),
        ("gold", Decimal("5000.00"), Decimal("1.25"), Decimal("0.88")),
        ("platinum", Decimal("20000.00"), Decimal("1.50"), Decimal("0.75")),
    ]


@pytest.fixture
def mobile(browser: Any) -> Iterator[Any]:
    """A phone-sized page (375×667), as the member sees it."""
    context = browser.new_context(
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
        viewport={"width": 375, "height": 667},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture
def shop(tiers: None) -> Any:
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    return store


@pytest.fixture
def member(shop: Any) -> Member:
    member, _ = member_enrol(phone="13812345678", name="王小明", store=shop)
    return member


@pytest.fixture
def member_with_points(member: Member, shop: Any) -> Member:
    """300 points earned 11⅔ months ago (expiring within 30 days) and 128 earned now."""
    identified = member_resolve(value=member.member_no)
    purchase_record(
        store=shop,
        terminal=None,
        receipt_no="R-OLD",
        amount=Decimal("300.00"),
        identified=identified,
        now=timezone.now() - relativedelta(months=12) + timedelta(days=10),
    )
    purchase_record(store=shop, terminal=None, receipt_no="R-NEW", amount=Decimal("128.50"), identified=identified)
    return member


def _open(page: Any, live_server: Any, member: Member) -> None:
    _, raw = member_token_issue(member=member)
    page.goto(f"{live_server.url}/m/?token={raw}")
    page.wait_for_selector("#code-digits[data-code]:not([data-code=''])")


def _shown_code(page: Any) -> str:
    # One read of both: with a 3 s step the code may change between two reads.
    code, text = page.eval_on_selector("#code-digits", "node => [node.dataset.code, node.innerText]")
    assert re.fullmatch(r"\d{18}", code)
    assert text.replace(" ", "") == code
    return code


def _shown_number(page: Any, selector: str) -> int:
    node = page.locator(selector)
    value = int(node.get_attribute("data-value"))
    assert int(re.sub(r"[^\d-]", "", node.inner_text())) == value
    return value


def test_home_shows_a_valid_refreshing_code_and_the_points_of_the_ledger(
    mobile, live_server, settings, member_with_points
):
    # given: a short code step so that the page has to refresh the code
    settings.LOYALTY_MEMBER_CODE_STEP_SECONDS = 3
    member = member_with_points
    summary = points_summary_get(member=member)
    assert summary["balance"] == 428
    assert summary["expiring_30d"] == 300
    # when
    _open(mobile, live_server, member)
    # then: the token left the address bar for localStorage
    assert "token=" not in mobile.url
    assert mobile.evaluate(f"localStorage.getItem('{TOKEN_KEY}')")
    # the code shown is this member's current code, with its QR
    first = _shown_code(mobile)
    assert member_get_by_code(code=first).member.pk == member.pk
    assert mobile.locator("#code-qr svg path").count() == 1
    assert mobile.locator("#code-qr svg").get_attribute("viewBox")
    # balance, spendable, pending and expiring points as in the ledger
    mobile.wait_for_selector("#points-balance[data-value]:not([data-value=''])")
    assert _shown_number(mobile, "#points-balance") == summary["balance"]
    assert _shown_number(mobile, "#points-spendable") == summary["spendable"]
    assert _shown_number(mobile, "#points-pending") == summary["pending"]
    rows = mobile.locator("#expiring-rows tr")
    shown = [
        (rows.nth(i).get_attribute("data-expires-on"), int(rows.nth(i).get_attribute("data-points")))
        for i in range(rows.count())
    ]
    assert shown == [(entry["expires_on"].isoformat(), entry["points"]) for entry in summary["expiring"]]
    assert rows.first.locator("td").nth(1).inner_text().replace(",", "") == "300"
    assert mobile.locator("#expiring-total").get_attribute("data-value") == "300"
    # and the code is replaced by the next one when it runs out
    mobile.wait_for_function(
        "old => document.getElementById('code-digits').dataset.code !== old", arg=first, timeout=8_000
    )
    second = _shown_code(mobile)
    assert second != first
    assert member_get_by_code(code=second).member.pk == member.pk


def test_code_is_fetched_again_when_the_page_becomes_visible(mobile, live_server, member):
    # given: the default 60 s step, so only visibility can trigger a fetch
    _open(mobile, live_server, member)
    # when
    with mobile.expect_response(lambda r: r.url.endswith("/api/v1/me/code")) as fetched:
        mobile.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    # then
    assert fetched.value.status == 200
    assert _shown_code(mobile) == fetched.value.json()["code"]


def test_exchange_takes_the_points_and_shows_the_coupon_with_its_qr(mobile, live_server, member_with_points):
    # given
    member = member_with_points
    benefit = Benefit.objects.create(
        name="满100减10",
        kind=Benefit.Kind.CASH_OFF,
        value=Decimal("10.00"),
        min_spend=Decimal("100.00"),
        points_price=100,
    )
    too_dear = Benefit.objects.create(name="电影票", kind=Benefit.Kind.GIFT, points_price=5000)
    _open(mobile, live_server, member)
    mobile.click("#tab-button-rewards")
    card = mobile.locator(f"[data-benefit-id='{benefit.pk}']")
    dear = mobile.locator(f"[data-benefit-id='{too_dear.pk}']")
    # then: what cannot be exchanged says why, as the API puts it
    assert dear.locator("button").is_disabled()
    with translation.override(mobile.get_attribute("html", "lang")):
        assert dear.locator(".m-reason").inner_text() == reason_text("points")
    # when: exchange, confirmed
    card.locator("[data-action=exchange]").click()
    with mobile.expect_response(lambda r: r.url.endswith(f"/benefits/{benefit.pk}/exchange")) as exchanged:
        card.locator("[data-action=confirm]").click()
    # then: one coupon, sent with an Idempotency-Key
    response = exchanged.value
    assert response.status == 201
    assert response.request.headers.get("idempotency-key")
    coupon = Coupon.objects.get(member=member)
    assert coupon.benefit_id == benefit.pk
    assert coupon.code == response.json()["code"]
    # the new coupon is shown first, with its QR
    shown = mobile.locator(f"#tab-coupons [data-testid=coupon][data-code='{coupon.code}']")
    shown.wait_for()
    assert "m-new" in shown.get_attribute("class")
    assert shown.locator("[data-testid=coupon-qr] svg path").count() == 1
    assert shown.locator(".m-coupon-code").inner_text() == coupon.code
    # and the balance went down by the price
    assert points_summary_get(member=member)["balance"] == 428 - 100
    mobile.click("#tab-button-home")
    mobile.wait_for_selector("#points-balance[data-value='328']")
    assert _shown_number(mobile, "#points-balance") == 328


def test_history_is_newest_first_and_loads_more_pages(mobile, live_server, member, shop):
    # given: 25 entries, one more than a page of 20
    identified = member_resolve(value=member.member_no)
    for n in range(25):
        purchase_record(
            store=shop, terminal=None, receipt_no=f"R-{n:02d}", amount=Decimal(n + 1), identified=identified
        )
    newest_first = [str(pk) for pk in entry_list(member=member).values_list("pk", flat=True)]
    _open(mobile, live_server, member)
    # when
    mobile.click("#tab-button-history")
    rows = mobile.locator("#ledger-list li")
    mobile.wait_for_selector("#ledger-list li >> nth=19")
    # then: the first page
    assert [rows.nth(i).get_attribute("data-entry-id") for i in range(rows.count())] == newest_first[:20]
    assert rows.first.get_attribute("data-points") == "25"
    assert "R-24" in rows.first.inner_text()
    # when: the next page
    mobile.click("#ledger-more")
    mobile.wait_for_selector("#ledger-list li >> nth=24")
    # then
    assert [rows.nth(i).get_attribute("data-entry-id") for i in range(rows.count())] == newest_first
    assert mobile.locator("#ledger-more").is_hidden()


def test_check_in_twice_says_already_checked_in(mobile, live_server, member):
    # given
    _open(mobile, live_server, member)
    # when
    with mobile.expect_response(lambda r: r.url.endswith("/me/check-in")) as first:
        mobile.click("#check-in")
    # then
    assert first.value.status == 201
    assert first.value.request.headers.get("idempotency-key")
    mobile.wait_for_selector("#check-in-message:not([hidden])")
    assert "5" in mobile.inner_text("#check-in-message")
    assert mobile.locator("#check-in").is_disabled()
    assert CheckIn.objects.filter(member=member).count() == 1
    mobile.wait_for_selector("#points-balance[data-value='5']")
    # when: again, after reopening the page
    mobile.reload()
    mobile.wait_for_selector("#code-digits[data-code]:not([data-code=''])")
    with mobile.expect_response(lambda r: r.url.endswith("/me/check-in")) as second:
        mobile.click("#check-in")
    # then: the API's own message, not an error banner, and nothing changed
    assert second.value.status == 409
    error = second.value.json()["error"]
    assert error["code"] == "already_checked_in"
    message = mobile.locator("#check-in-message")
    message.wait_for()
    assert message.inner_text() == error["message"]
    assert "m-info" in message.get_attribute("class")
    assert mobile.locator("#m-banner").is_hidden()
    assert mobile.locator("#check-in").is_disabled()
    assert CheckIn.objects.filter(member=member).count() == 1
    assert points_summary_get(member=member)["balance"] == 5


def test_dev_login_registers_a_new_member_then_shows_home(mobile, live_server, tiers):
    # given
    mobile.goto(f"{live_server.url}/m/")
    mobile.wait_for_selector("#screen-login:not([hidden])")
    # when: WeChat login with an openid nobody has
    mobile.fill("#login-code", "dev-abc")
    mobile.click("#login-submit")
    # then: registration
    mobile.wait_for_selector("#screen-register:not([hidden])")
    assert not Member.objects.exists()
    # when
    mobile.fill("#register-phone", "13900001111")
    mobile.fill("#register-name", "李四")
    mobile.fill("#register-birthday", "1990-05-06")
    mobile.check("#register-consent")
    mobile.click("#register-submit")
    # then: home with the new member's code
    mobile.wait_for_selector("#screen-app:not([hidden])")
    mobile.wait_for_selector("#code-digits[data-code]:not([data-code=''])")
    member = Member.objects.get()
    assert (member.wechat_openid, member.phone, member.name) == ("abc", "+8613900001111", "李四")
    assert member.birthday.isoformat() == "1990-05-06"
    assert member.marketing_consent is True
    assert member.channel == Member.Channel.MINI_PROGRAM
    assert member_get_by_code(code=_shown_code(mobile)).member.pk == member.pk
    assert mobile.locator("#me-member-no").inner_text() == member.member_no
    # when: signed out, the same WeChat login goes straight home
    mobile.click("#sign-out")
    mobile.wait_for_selector("#screen-login:not([hidden])")
    assert mobile.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    # and the server revoked the token (the page does not wait for that answer)
    for _ in range(50):
        if MemberToken.objects.filter(member=member, revoked_at__isnull=False).exists():
            break
        mobile.wait_for_timeout(100)
    assert MemberToken.objects.filter(member=member).count() == 1
    assert MemberToken.objects.filter(member=member, revoked_at__isnull=True).count() == 0
    mobile.fill("#login-code", "dev-abc")
    mobile.click("#login-submit")
    mobile.wait_for_selector("#code-digits[data-code]:not([data-code=''])")
    assert member_get_by_code(code=_shown_code(mobile)).member.pk == member.pk
    assert Member.objects.count() == 1


def test_registration_errors_from_the_api_are_shown_at_the_field(mobile, live_server, tiers):
    # given
    mobile.goto(f"{live_server.url}/m/")
    mobile.fill("#login-code", "dev-xyz")
    mobile.click("#login-submit")
    mobile.wait_for_selector("#screen-register:not([hidden])")
    # when: a phone that is not a mobile number
    mobile.fill("#register-phone", "12")
    with mobile.expect_response(lambda r: r.url.endswith("/auth/register")) as refused:
        mobile.click("#register-submit")
    # then
    assert refused.value.status == 400
    error = refused.value.json()["error"]
    assert error["code"] == "invalid_phone"
    shown = mobile.locator("[data-error-for=phone]")
    shown.wait_for()
    assert shown.inner_text() == error["message"]
    assert mobile.locator("#screen-register").is_visible()
    assert not Member.objects.exists()


def test_a_rejected_token_goes_back_to_login(mobile, live_server, tiers):
    # when
    mobile.goto(f"{live_server.url}/m/?token=abcdef.not-a-real-token")
    # then
    mobile.wait_for_selector("#screen-login:not([hidden])")
    assert mobile.inner_text("#login-notice")
    assert mobile.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None


def test_language_buttons_switch_the_page_to_english(mobile, live_server, tiers):
    # given
    mobile.goto(f"{live_server.url}/m/")
    assert mobile.get_attribute("html", "lang") == "zh-hans"
    # when
    mobile.click("#m-langs [data-language=en]")
    # then
    mobile.wait_for_function("document.documentElement.lang === 'en'")
    assert mobile.get_attribute("#m-langs [data-language=en]", "aria-pressed") == "true"
