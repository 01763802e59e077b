"""A seeded history for report tests, written through the real services.

Every change goes through the services of the other apps (enrolment,
purchases, refunds, claims, exchanges, adjustments, tier changes, closing,
the nightly expiry jobs, campaign runs) in time order, with the clock set to
each event's moment (``clock``), so that every ``created_at`` the services
stamp is the event's own time and the ledger is what production would write.

``seed_history`` builds eight months of it (2025-09 … 2026-04, plus two older
members) with the cases the reports must get right: refunds made a month
after the purchase, a receipt claimed in the month after it was paid,
a purchase at 23:30 on the last day of a month, a fully refunded purchase
and a coupon restored by a refund, a points clawback (negative balance),
a refund that gives back more points than it takes, expiry of points and
coupons, upgrades and downgrades, and a member closed mid-month.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock

from django.test import override_settings

from campaigns.models import Benefit, Campaign, Coupon
from campaigns.services.campaigns import campaign_run
from campaigns.services.coupons import benefit_exchange, coupon_issue, coupons_expire_due
from members.models import Member, Store, Terminal, Tier
from members.selectors import IdentifiedMember
from members.services import member_close, member_enrol, member_set_tier, store_get_or_create, terminal_create
from points.batch import points_expire_due
from points.models import Purchase
from points.services import adjustment_request, member_check_in, purchase_claim, purchase_record, purchase_refund
from tests.points.factories import OperatorFactory, local

# Points expire 2 months after earning in the seeded history, so that expiry
# happens within it (production default: 12).
EXPIRY_MONTHS = 2
SEEDED_MONTHS = [date(2025, 9, 1)] + [date(y, m, 1) for y, m in [(2025, 10), (2025, 11), (2025, 12)]] + [
    date(2026, m, 1) for m in (1, 2, 3, 4)
]
SEED_UNTIL = date(2026, 5, 1)


@contextmanager
def clock(at: datetime) -> Iterator[None]:
    """Every ``timezone.now()`` (and so every ``auto_now_add``) returns ``at``."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


class Timeline:
    """Events to run in time order, each with the clock at its moment, with
    the nightly jobs (points expiry 00:10, coupon expiry 00:20) every day."""

    def __init__(self) -> None:
        self.events: list[tuple[datetime, int, Callable[[], Any]]] = []

    def at(self, moment: datetime, action: Callable[[], Any]) -> None:
        self.events.append((moment, len(self.events), action))

    def nightly(self, first: date, last: date) -> None:
        day = first
        while day <= last:
            night = local(day.year, day.month, day.day, 0, 10)
            self.at(night, lambda night=night: points_expire_due(as_of=night))
            dawn = local(day.year, day.month, day.day, 0, 20)
            self.at(dawn, lambda dawn=dawn: coupons_expire_due(as_of=dawn))
            day += timedelta(days=1)

    def run(self) -> None:
        for moment, _, action in sorted(self.events, key=lambda event: (event[0], event[1])):
            with clock(moment):
                action()


@dataclass
class History:
    stores: dict[str, Store]
    terminals: dict[str, Terminal]
    members: dict[str, Member] = field(default_factory=dict)
    coupons: dict[str, Coupon] = field(default_factory=dict)
    benefits: dict[str, Benefit] = field(default_factory=dict)
    operator: Any = None
    campaign: Campaign | None = None
    steps: int = 10**9

    def member(self, key: str) -> Member:
        return Member.objects.select_related("tier").get(pk=self.members[key].pk)

    def enrol(self, key: str, store: str, phone: str) -> None:
        member, _ = member_enrol(phone=phone, name=f"会员{key}", store=self.stores[store])
        self.members[key] = member

    def buy(
        self,
        key: str | None,
        store: str,
        receipt: str,
        amount: str,
        *,
        points: int = 0,
        coupons: list[str] | None = None,
        at: datetime,
    ) -> Purchase:
        identified = None
        if key is not None:
            member = self.member(key)
            if points or coupons:
                self.steps += 1  # a member code used once (as scanned at the till)
                identified = IdentifiedMember(member=member, code_step=self.steps)
            else:
                identified = IdentifiedMember(member=member, code_step=None)
        result = purchase_record(
            store=self.stores[store],
            terminal=self.terminals[store],
            receipt_no=receipt,
            amount=Decimal(amount),
            paid_at=at,
            now=at,
            identified=identified,
            points_to_use=points,
            coupon_codes=[self.coupons[name].code for name in coupons or []],
        )
        return result.purchase

    def refund(self, store: str, receipt: str, refund_no: str, amount: str, *, at: datetime) -> None:
        purchase_refund(
            store=self.stores[store],
            terminal=self.terminals[store],
            receipt_no=receipt,
            refund_no=refund_no,
            amount=Decimal(amount),
            at=at,
        )

    def grant(self, name: str, benefit: str, key: str, *, at: datetime) -> None:
        self.coupons[name] = coupon_issue(
            benefit=self.benefits[benefit], member=self.member(key), source=Coupon.Source.OPERATOR, at=at
        )


def stores_and_terminals() -> tuple[dict[str, Store], dict[str, Terminal]]:
    stores, terminals = {}, {}
    for code, name in (("SH001", "上海南京西路店"), ("BJ001", "北京三里屯店"), ("GZ001", "广州天河店")):
        stores[code], _ = store_get_or_create(code=code, name=name)
        terminals[code], _ = terminal_create(store=stores[code], name="till-1")
    return stores, terminals


def benefits() -> dict[str, Benefit]:
    return {
        "cash": Benefit.objects.create(
            name="满100减10元券", kind=Benefit.Kind.CASH_OFF, value=Decimal("10.00"), valid_days=30
        ),
        "gift": Benefit.objects.create(name="60天礼品券", kind=Benefit.Kind.GIFT, value=Decimal("30.00"), valid_days=60),
        "exchange": Benefit.objects.create(
            name="积分兑换保温杯", kind=Benefit.Kind.GIFT, value=Decimal("90.00"), points_price=900, valid_days=90
        ),
    }


def seed_history() -> History:
    """The eight-month history described in the module docstring."""
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    h.operator = OperatorFactory(username="report-operator")
    t = Timeline()

    def campaign_create() -> None:
        h.campaign = Campaign.objects.create(
            name="一月发券",
            kind=Campaign.Kind.COUPON_GRANT,
            status=Campaign.Status.ACTIVE,
            starts_at=local(2026, 1, 1),
            ends_at=local(2026, 2, 1),
            benefit=h.benefits["cash"],
        )

    def campaign_coupon_of(key: str, name: str) -> None:
        h.coupons[name] = Coupon.objects.get(member=h.members[key], source=Coupon.Source.CAMPAIGN)

    # Older members: G never buys (churned), H bought once long ago and once more, refunded.
    t.at(local(2025, 6, 1, 10), lambda: h.enrol("G", "SH001", "13900000007"))
    t.at(local(2025, 8, 15, 10), lambda: h.enrol("H", "BJ001", "13900000008"))
    t.at(local(2025, 9, 10, 15), lambda: h.buy("H", "BJ001", "R-H1", "88.00", at=local(2025, 9, 10, 15)))
    t.at(local(2025, 11, 20, 11), lambda: h.enrol("A", "SH001", "13900000001"))
    t.at(local(2025, 12, 3, 12), lambda: h.buy("A", "SH001", "R-A1", "300.00", at=local(2025, 12, 3, 12)))
    t.at(local(2025, 12, 5, 9, 30), lambda: h.enrol("B", "BJ001", "13900000002"))
    t.at(local(2025, 12, 10, 18), lambda: h.buy("B", "BJ001", "R-B1", "150.00", at=local(2025, 12, 10, 18)))
    t.at(local(2025, 12, 15, 10), lambda: h.grant("cA1", "cash", "A", at=local(2025, 12, 15, 10)))
    t.at(local(2025, 12, 20, 14), lambda: h.buy("A", "BJ001", "R-A2", "200.00", at=local(2025, 12, 20, 14)))
    t.at(local(2025, 12, 20, 16), lambda: h.enrol("C", "SH001", "13900000003"))
    t.at(local(2025, 12, 22, 10), lambda: h.grant("cC1", "gift", "C", at=local(2025, 12, 22, 10)))
    t.at(local(2025, 12, 28, 13), lambda: h.buy("H", "BJ001", "R-H2", "60.00", at=local(2025, 12, 28, 13)))
    t.at(local(2026, 1, 1, 0, 30), campaign_create)
    t.at(local(2026, 1, 3, 10), lambda: h.refund("BJ001", "R-H2", "F-H2", "60.00", at=local(2026, 1, 3, 10)))
    t.at(
        local(2026, 1, 5, 12),
        lambda: h.buy("C", "SH001", "R-C1", "400.00", coupons=["cC1"], at=local(2026, 1, 5, 12)),
    )
    t.at(
        local(2026, 1, 8, 10),
        lambda: adjustment_request(member=h.member("B"), points=200, reason="补录积分", by_user=h.operator),
    )
    t.at(local(2026, 1, 8, 10, 5), lambda: h.grant("cB1", "cash", "B", at=local(2026, 1, 8, 10, 5)))
    t.at(local(2026, 1, 10, 10), lambda: h.enrol("D", "BJ001", "13900000004"))
    t.at(local(2026, 1, 10, 11), lambda: campaign_run(campaign=h.campaign, at=local(2026, 1, 10, 11)))
    t.at(local(2026, 1, 10, 11, 1), lambda: campaign_coupon_of("A", "cA2"))
    t.at(local(2026, 1, 12, 15), lambda: h.buy("D", "BJ001", "R-D1", "1000.00", at=local(2026, 1, 12, 15)))
    # 6000 more crosses gold's 5000 threshold: upgrade (the purchase itself counts as silver).
    t.at(
        local(2026, 1, 15, 11),
        lambda: h.buy("A", "SH001", "R-A3", "6000.00", coupons=["cA2"], at=local(2026, 1, 15, 11)),
    )
    t.at(local(2026, 1, 20, 19), lambda: h.buy("B", "BJ001", "R-B2", "80.00", at=local(2026, 1, 20, 19)))
    t.at(
        local(2026, 1, 25, 10),
        lambda: benefit_exchange(benefit=h.benefits["exchange"], member=h.member("D"), at=local(2026, 1, 25, 10)),
    )
    t.at(local(2026, 1, 28, 16), lambda: h.buy(None, "SH001", "R-X1", "250.00", at=local(2026, 1, 28, 16)))
    # The last half hour of January is January.
    t.at(local(2026, 1, 31, 23, 30), lambda: h.buy("A", "SH001", "R-A4", "100.00", at=local(2026, 1, 31, 23, 30)))
    t.at(local(2026, 1, 31, 23, 30), lambda: h.enrol("E", "SH001", "13900000005"))
    t.at(local(2026, 2, 1, 0, 15), lambda: h.enrol("F", "SH001", "13900000006"))
    # C's purchase fully refunded a month later: its coupon comes back (valid until 20 February).
    t.at(local(2026, 2, 1, 11), lambda: h.refund("SH001", "R-C1", "F-C1", "400.00", at=local(2026, 2, 1, 11)))
    # The anonymous receipt: part refunded, then claimed by B in February (it stays a January purchase).
    t.at(local(2026, 2, 2, 10), lambda: h.refund("SH001", "R-X1", "F-X1", "50.00", at=local(2026, 2, 2, 10)))
    # D already spent 900 of the 1000 points: the refund claws back 200 (balance -200).
    t.at(local(2026, 2, 3, 14), lambda: h.refund("BJ001", "R-D1", "F-D1", "300.00", at=local(2026, 2, 3, 14)))
    t.at(
        local(2026, 2, 5, 12),
        lambda: purchase_claim(
            member=h.member("B"), store=h.stores["SH001"], receipt_no="R-X1", at=local(2026, 2, 5, 12)
        ),
    )
    t.at(
        local(2026, 2, 10, 15),
        lambda: h.buy("A", "SH001", "R-A5", "500.00", points=1000, at=local(2026, 2, 10, 15)),
    )
    t.at(
        local(2026, 2, 12, 10),
        lambda: member_set_tier(
            member=h.member("B"),
            tier=Tier.objects.get(code="platinum"),
            by_user=h.operator,
            reason="VIP客户",
            override_until=local(2026, 8, 12),
        ),
    )
    t.at(local(2026, 2, 14, 12), lambda: h.buy("E", "SH001", "R-E1", "120.00", at=local(2026, 2, 14, 12)))
    t.at(local(2026, 2, 14, 12, 5), lambda: member_check_in(member=h.member("E"), at=local(2026, 2, 14, 12, 5)))
    t.at(local(2026, 2, 15, 10), lambda: member_close(member=h.member("C"), by_user=h.operator, reason="会员申请注销"))
    t.at(local(2026, 2, 20, 13), lambda: h.buy("D", "BJ001", "R-D2", "50.00", at=local(2026, 2, 20, 13)))
    t.at(
        local(2026, 2, 25, 10),
        lambda: adjustment_request(member=h.member("E"), points=-50, reason="误操作冲正", by_user=h.operator),
    )
    # Refund of a purchase paid partly with points: 400 used points come back, 244 earned go (net +156).
    t.at(local(2026, 3, 3, 11), lambda: h.refund("SH001", "R-A5", "F-A5", "200.00", at=local(2026, 3, 3, 11)))
    t.at(local(2026, 3, 5, 10), lambda: h.buy("B", "BJ001", "R-B3", "300.00", at=local(2026, 3, 5, 10)))
    t.at(
        local(2026, 3, 10, 10),
        lambda: member_set_tier(
            member=h.member("A"), tier=Tier.objects.get(code="silver"), by_user=h.operator, reason="降级调整"
        ),
    )
    t.at(local(2026, 3, 15, 16), lambda: h.buy("F", "SH001", "R-F1", "99.00", at=local(2026, 3, 15, 16)))
    t.at(local(2026, 3, 16, 10), lambda: h.refund("SH001", "R-F1", "F-F1", "99.00", at=local(2026, 3, 16, 10)))
    t.at(local(2026, 3, 20, 12), lambda: h.buy("A", "SH001", "R-A6", "80.00", at=local(2026, 3, 20, 12)))
    t.at(local(2026, 3, 25, 12), lambda: h.buy("A", "BJ001", "R-A7", "90.00", at=local(2026, 3, 25, 12)))
    t.at(local(2026, 4, 10, 18), lambda: h.buy("B", "BJ001", "R-B4", "200.00", at=local(2026, 4, 10, 18)))
    t.nightly(date(2025, 9, 1), SEED_UNTIL - timedelta(days=1))
    with override_settings(LOYALTY_POINTS_EXPIRY_MONTHS=EXPIRY_MONTHS):
        t.run()
    return h
