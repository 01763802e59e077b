"""The clerk console in a real browser, against a live server: a clerk signs in,
scans a member code with the keyboard (as a wedge scanner types it), records a
purchase with points and a coupon through a lost response and a retry, refunds
it, writes off a coupon, enrols a walk-in, and meets an expired code.

Transactional (``live_server`` serves from another thread): the test database
is flushed afterwards, which also empties the default tiers of the data
migration; they are created at the start and put back once the module is done.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.utils import timezone, translation
from playwright.sync_api import expect

from campaigns.models import Benefit, Coupon
from campaigns.services.coupons import coupon_issue
from loyalty.roles import CLERK
from members import codes
from members.console import ERROR_HINTS, TEXTS
from members.errors import MemberCodeExpired
from members.models import Member, StaffProfile, Store
from members.selectors import member_code_current
from members.services import member_enrol, store_get_or_create
from points.models import PointsAccount, PointsEntry, Purchase
from points.services import Refs, points_credit

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "clerk-password-1"
# Where to keep a screenshot of the console after a purchase (for a look at the layout).
SCREENSHOT_ENV = "CONSOLE_SCREENSHOT"


def _create_default_tiers() -> None:
    from django.apps import apps

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


@pytest.fixture(scope="module", autouse=True)
def _default_tiers_restored(django_db_blocker: Any) -> Iterator[None]:
    """After the module's last flush, give later tests their default tiers back."""
    yield
    with django_db_blocker.unblock():
        _create_default_tiers()


@dataclass
class Shop:
    store: Store
    member: Member
    coupon: Coupon
    gift: Coupon


@pytest.fixture
def shop(transactional_db: Any) -> Shop:
    _create_default_tiers()  # silver 0/1.00/0.95, gold 5000/1.25/0.88, platinum 20000/1.50/0.75
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    clerks, _ = Group.objects.get_or_create(name=CLERK)
    clerks.permissions.add(Permission.objects.get(content_type__app_label="members", codename="use_console"))
    clerk = get_user_model().objects.create_user(username="clerk", password=PASSWORD)
    clerk.groups.add(clerks)
    StaffProfile.objects.create(user=clerk, store=store)

    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    welcome = Refs(source=PointsEntry.Source.CAMPAIGN, reason="welcome")
    points_credit(
        member=member,
        points=500,
        kind=PointsEntry.Kind.BONUS,
        refs=welcome,
        expires_at=timezone.now() + timedelta(days=10),
    )
    points_credit(member=member, points=1500, kind=PointsEntry.Kind.BONUS, refs=welcome)
    cash_off = Benefit.objects.create(name="满100减20", kind=Benefit.Kind.CASH_OFF, value=Decimal("20.00"))
    gift = Benefit.objects.create(name="会员礼品", kind=Benefit.Kind.GIFT, value=Decimal("15.00"))
    return Shop(
        store=store,
        member=member,
        coupon=coupon_issue(benefit=cash_off, member=member, source=Coupon.Source.OPERATOR),
        gift=coupon_issue(benefit=gift, member=member, source=Coupon.Source.OPERATOR),
    )


def _balance(member: Member) -> int:
    return PointsAccount.objects.get(member=member).balance


def _scan(page: Any, text: str) -> None:
    """What a keyboard-wedge scanner does: type into the focused field, then Enter."""
    expect(page.locator("#scan")).to_be_focused()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_a_clerk_serves_members_at_the_console(live_server: Any, page: Any, shop: Shop, tmp_path: Path):
    member = shop.member
    page.set_viewport_size({"width": 1024, "height": 768})

    # given: the clerk signs in
    page.goto(f"{live_server.url}/console/")
    expect(page).to_have_url(f"{live_server.url}/console/login/?next=/console/")
    page.locator("#id_username").fill("clerk")
    page.locator("#id_password").fill(PASSWORD)
    page.locator("#id_password").press("Enter")
    expect(page).to_have_url(f"{live_server.url}/console/")

    # when: the member's code is scanned
    code, _ = member_code_current(member=member)
    _scan(page, code)

    # then: the member, balance, expiring points and coupons are shown; the cursor waits in the scan field
    expect(page.locator("#member-balance")).to_have_text("2,000")
    expect(page.locator("#member-balance")).to_have_attribute("data-value", str(_balance(member)))
    expect(page.locator("#member-spendable")).to_have_text("2,000")
    expect(page.locator("#member-cash")).to_have_text("¥20.00")
    expect(page.locator("#member-phone")).to_have_text("138****5678")
    expect(page.locator("#member-name")).to_have_text("王**")
    expect(page.locator("#member-tier")).to_have_text("银卡 Silver")
    expect(page.locator("#member-discount")).to_have_text("95%")
    expect(page.locator("#member-expiring li")).to_have_count(1)
    expect(page.locator("#member-expiring")).to_contain_text("500")
    expect(page.locator("#member-coupons")).to_contain_text(shop.coupon.code)
    expect(page.locator("#member-coupons")).to_contain_text("满100减20")
    expect(page.locator("#scan")).to_be_focused()

    # when: a purchase uses 1,000 points and the coupon, and its first response is lost on the way back
    page.locator("#purchase-amount").fill("200.00")
    page.locator("#purchase-receipt").fill("R-1001")
    expect(page.locator("#purchase-points-max")).to_have_attribute("data-max", "2000")
    page.locator("#purchase-points").fill("1000")
    page.locator(f"#member-coupons input[data-coupon='{shop.coupon.code}']").check()
    keys: list[str | None] = []

    def lose_first_response(route: Any) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the server records the purchase ...
            route.abort("failed")  # ... but its answer never reaches the till
        else:
            route.continue_()

    page.route("**/api/v1/terminal/purchases", lose_first_response)
    page.locator("#panel-purchase button[type=submit]").click()

    # then: the clerk is told to retry, and the purchase is in fact already recorded
    expect(page.locator("#error")).to_have_attribute("data-code", "network")
    expect(page.locator("#error-retry")).to_be_visible()
    assert Purchase.objects.count() == 1

    # when: the clerk retries
    page.locator("#error-retry").click()

    # then: the same attempt is answered, recorded once, and the screen agrees with the ledger
    expect(page.locator("#result-balance")).to_have_text("1,190")
    assert keys[0]
    assert keys[0] == keys[1]
    purchase = Purchase.objects.get()
    assert (purchase.store, purchase.receipt_no, purchase.points_used, purchase.points_earned) == (
        shop.store,
        "R-1001",
        1000,
        190,
    )
    assert purchase.cash_paid_by_points == Decimal("10.00")
    assert _balance(member) == 1190
    expect(page.locator("#result-earned")).to_have_text("+190")
    expect(page.locator("#result-used")).to_have_text("1,000")
    expect(page.locator("#result-cash")).to_have_text("¥10.00")
    expect(page.locator("#result-due")).to_have_text("¥190.00")
    expect(page.locator("#result-coupons")).to_contain_text(shop.coupon.code)
    expect(page.locator("#member-balance")).to_have_attribute("data-value", "1190")
    expect(page.locator("#member-coupons")).not_to_contain_text(shop.coupon.code)
    with translation.override("zh-hans"):
        rescan = str(TEXTS["max_points_none"])
    expect(page.locator("#purchase-points-max")).to_have_text(rescan)  # the code is spent
    shop.coupon.refresh_from_db()
    assert shop.coupon.status == Coupon.Status.WRITTEN_OFF
    expect(page.locator("#scan")).to_be_focused()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    page.screenshot(path=os.environ.get(SCREENSHOT_ENV) or str(tmp_path / "console.png"))
    page.unroute("**/api/v1/terminal/purchases")

    # when: points are used again without a new scan
    page.locator("#purchase-amount").fill("50.00")
    page.locator("#purchase-receipt").fill("R-1001B")
    page.locator("#purchase-points").fill("100")
    page.locator("#purchase-points").press("Enter")

    # then: the clerk is told to scan the member's code, and nothing is recorded
    expect(page.locator("#error")).to_have_attribute("data-code", "member_code_required")
    with translation.override("zh-hans"):
        expect(page.locator("#error-hint")).to_have_text(str(ERROR_HINTS["member_code_required"]))
    assert Purchase.objects.count() == 1
    assert _balance(member) == 1190

    # when: the whole purchase is refunded
    page.locator("#tab-refund").click()
    page.locator("#refund-receipt").fill("R-1001")
    page.locator("#refund-no").fill("RF-1001")
    page.locator("#refund-amount").fill("200.00")
    page.locator("#refund-amount").press("Enter")

    # then: points earned are taken back, points used come back, and so does the coupon
    expect(page.locator("#result-balance")).to_have_text("2,000")
    expect(page.locator("#result-reversed")).to_have_text("190")
    expect(page.locator("#result-returned")).to_have_text("1,000")
    expect(page.locator("#result-restored")).to_have_text(shop.coupon.code)
    assert _balance(member) == 2000
    shop.coupon.refresh_from_db()
    assert shop.coupon.status == Coupon.Status.ISSUED
    expect(page.locator("#member-balance")).to_have_attribute("data-value", "2000")
    expect(page.locator("#member-coupons")).to_contain_text(shop.coupon.code)
    expect(page.locator("#scan")).to_be_focused()

    # when: the next customer hands over a gift coupon, scanned into the scan field, with a receipt
    page.locator("#member-clear").click()
    _scan(page, shop.gift.code)
    expect(page.locator("#coupon-code")).to_have_value(shop.gift.code)
    expect(page.locator("#coupon-receipt")).to_be_focused()
    page.keyboard.type("R-1002")
    page.keyboard.press("Enter")

    # then: it is written off once ...
    expect(page.locator("#result-title")).to_contain_text(shop.gift.code)
    expect(page.locator("#result-coupon-name")).to_have_text("会员礼品")
    shop.gift.refresh_from_db()
    assert (shop.gift.status, shop.gift.written_off_receipt) == (Coupon.Status.WRITTEN_OFF, "R-1002")

    # ... and a second try says where and when it was first used
    _scan(page, shop.gift.code)
    page.keyboard.type("R-1003")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_have_attribute("data-code", "coupon_already_written_off")
    expect(page.locator("#error-message")).to_contain_text(shop.store.name)
    expect(page.locator("#error-message")).to_contain_text("R-1002")
    shop.gift.refresh_from_db()
    assert shop.gift.written_off_receipt == "R-1002"

    # when: a walk-in customer is enrolled by phone
    page.locator("#tab-enrol").click()
    page.locator("#enrol-phone").fill("139 0000 1111")
    page.locator("#enrol-name").fill("李雷")
    page.locator("#enrol-birthday").fill("1990-05-01")
    page.locator("#panel-enrol button[type=submit]").click()

    # then: the new member is shown, enrolled at this store
    expect(page.locator("#member-phone")).to_have_text("139****1111")
    walk_in = Member.objects.get(phone="+8613900001111")
    expect(page.locator("#member-no")).to_have_text(walk_in.member_no)
    assert (walk_in.name, walk_in.registration_store) == ("李雷", shop.store)
    assert str(walk_in.birthday) == "1990-05-01"
    expect(page.locator("#member-balance")).to_have_text("0")

    # when: an expired code is scanned
    old = timezone.now() - timedelta(seconds=3 * codes._step_seconds())
    expired, _ = member_code_current(member=member, at=old)
    _scan(page, expired)

    # then: the clerk reads why, in the page's language, and what to do next
    with translation.override("zh-hans"):
        message = MemberCodeExpired().render_message()
        hint = str(ERROR_HINTS["code_expired"])
    expect(page.locator("#error")).to_have_attribute("data-code", "code_expired")
    expect(page.locator("#error-message")).to_have_text(message)
    expect(page.locator("#error-hint")).to_have_text(hint)
    expect(page.locator("#member")).to_be_hidden()
    expect(page.locator("#scan")).to_be_focused()
