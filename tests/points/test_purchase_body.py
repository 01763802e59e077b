"""The till's purchase body and response, built by hand for speed
(``points.apis.purchase_body`` and ``purchase_output``), against the
serializers that define them and that the schema documents."""

from decimal import Decimal

import pytest
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from loyalty.api.bodies import represent, validated
from members.models import Member, Tier
from points import services
from points.apis import PurchaseInputSerializer, PurchaseOutputSerializer, purchase_body, purchase_output
from points.models import Purchase

from .test_apis_purchase import _buy

_TEXT = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="0123456789", min_size=1, max_size=20),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-./ ]{0,70}", fullmatch=True),
    st.sampled_from(["", " ", " 123456789012345678", "138 0013 8000", "R-1\n", "R\x00", "１２８.５０", "1e3", "NaN"]),
)
_AMOUNT = st.one_of(
    st.from_regex(r"[0-9]{0,12}(\.[0-9]{0,3})?", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-10, max_value=10**13),
    st.floats(),
    st.sampled_from(["0.00", "0.01", "1000000.00", "1000000.01", "0000000001.5", " 12.00", "12.", ".5"]),
)
_VALUE = st.one_of(_TEXT, _AMOUNT, st.none(), st.booleans(), st.lists(st.integers(), max_size=2))


def _serializer(data):
    try:
        return validated(PurchaseInputSerializer, data)
    except serializers.ValidationError:
        return None


@settings(max_examples=600, deadline=None)
@given(
    member=st.one_of(_TEXT, _VALUE),
    receipt_no=st.one_of(_TEXT, _VALUE),
    amount=st.one_of(_AMOUNT, _VALUE),
    extra=st.dictionaries(
        st.sampled_from(["paid_at", "lines", "points_to_use", "coupon_codes", "other"]), _VALUE, max_size=2
    ),
    drop=st.sets(st.sampled_from(["member", "receipt_no", "amount"]), max_size=1),
)
def test_the_hand_checked_body_is_what_the_serializer_makes_of_it(member, receipt_no, amount, extra, drop):
    data = {"member": member, "receipt_no": receipt_no, "amount": amount, **extra}
    for key in drop:
        del data[key]
    fast = purchase_body(data)
    if fast is not None:
        assert fast == _serializer(data)
        assert type(fast["amount"]) is Decimal
        assert fast["amount"].as_tuple().exponent == -2


@settings(max_examples=400, deadline=None)
@given(
    member=st.from_regex(r"[ -~]{0,66}", fullmatch=True),
    receipt_no=st.from_regex(r"[ -~]{0,3}[A-Za-z0-9_\-./]{0,66}", fullmatch=True),
    amount=st.from_regex(r" ?[0-9]{0,11}(\.[0-9]{0,3})? ?", fullmatch=True),
)
def test_near_the_edges_the_hand_checked_body_is_the_serializers(member, receipt_no, amount):
    data = {"member": member, "receipt_no": receipt_no, "amount": amount}
    fast = purchase_body(data)
    slow = _serializer(data)
    if fast is not None:
        assert fast == slow
    elif slow is not None:  # left to the serializer only where it trims or the edge is not plain
        assert member != member.strip() or amount != amount.strip() or receipt_no != receipt_no.strip() or (
            not amount.partition(".")[0] or amount.endswith(".") or len(amount.partition(".")[0]) > 10
        ), data


@pytest.mark.parametrize(
    ("member", "receipt_no", "amount"),
    [
        ("123456789012345678", "R-1", "128.50"),
        ("", "2026/11/27-0001", "0.01"),
        ("13800138000", "a.b_c-d/e", "1000000"),
        ("138 0013 8000", "R" * 64, "12.5"),
    ],
)
def test_the_bodies_a_till_sends_take_the_hand_checked_path(member, receipt_no, amount):
    data = {"member": member, "receipt_no": receipt_no, "amount": amount}
    fast = purchase_body(data)
    assert fast is not None
    assert fast == validated(PurchaseInputSerializer, data)


@pytest.mark.parametrize(
    "data",
    [
        {"member": "1", "receipt_no": "R-1", "amount": "0.00"},  # below the minimum
        {"member": "1", "receipt_no": "R-1", "amount": "1000000.01"},  # above the maximum
        {"member": "1", "receipt_no": "R-1", "amount": "1.234"},  # three decimals
        {"member": "1", "receipt_no": "-R", "amount": "1.00"},  # receipt starts with punctuation
        {"member": "1", "receipt_no": "R" * 65, "amount": "1.00"},  # receipt too long
        {"member": "1" * 65, "receipt_no": "R-1", "amount": "1.00"},  # member too long
        {"member": "1", "receipt_no": "R-1", "amount": 12},  # a JSON number: the serializer decides
        {"member": " 1", "receipt_no": "R-1", "amount": "1.00"},  # the serializer trims
        {"member": "1", "receipt_no": "R-1", "amount": "1.00", "points_to_use": 0},
        ["member", "receipt_no", "amount"],
    ],
)
def test_anything_else_is_left_to_the_serializer(data):
    assert purchase_body(data) is None


@override_settings(LOYALTY_PURCHASE_MAX_AMOUNT=Decimal("500.00"))
def test_the_maximum_amount_is_the_setting():
    assert purchase_body({"member": "", "receipt_no": "R-1", "amount": "500.00"})["amount"] == Decimal("500.00")
    assert purchase_body({"member": "", "receipt_no": "R-1", "amount": "500.01"}) is None


def _serializer_output(result):
    """``purchase_output`` as it was, through the serializer."""
    purchase = result.purchase
    return represent(
        PurchaseOutputSerializer,
        {
            "receipt_no": purchase.receipt_no,
            "member_no": purchase.member.member_no if purchase.member else None,
            "amount": purchase.amount,
            "points_earned": purchase.points_earned,
            "points_pending": result.points_pending,
            "points_used": purchase.points_used,
            "cash_paid_by_points": purchase.cash_paid_by_points,
            "amount_due": purchase.amount - purchase.cash_paid_by_points,
            "coupons_written_off": result.coupons_written_off,
            "balance": result.balance,
            "spendable": result.spendable,
            "tier": {"code": result.tier.code, "name": result.tier.name} if result.tier else None,
            "tier_changed": result.tier_changed,
            "offline": purchase.offline,
        },
    )


@pytest.mark.parametrize("with_member", [True, False])
@pytest.mark.parametrize("cash", [Decimal("0.00"), Decimal("2.5"), 0, Decimal("12.345")])
def test_the_hand_built_response_is_what_the_serializer_renders(with_member, cash):
    purchase = Purchase(
        receipt_no="R-1", amount=Decimal("128.5"), points_earned=126, points_used=250, cash_paid_by_points=cash,
        offline=with_member,
    )
    if with_member:
        purchase.member = Member(member_no="1000000001")
    tier = Tier(code="gold", name="黄金") if with_member else None
    coupons = [
        {"code": "ABCD-EFGH", "name": "¥10 off", "kind": "cash_off", "value": Decimal("10"), "cash_price": Decimal("0.00")},
        {"code": "WXYZ", "name": "Gift", "kind": "gift", "value": Decimal("0.5"), "cash_price": Decimal("3.10")},
    ] if with_member else []
    result = services.PurchaseResult(
        purchase, balance=1234, spendable=1000, points_pending=126, tier=tier, tier_changed=with_member,
        coupons_written_off=coupons,
    )
    assert purchase_output(result) == _serializer_output(result)
    assert list(purchase_output(result)) == list(PurchaseOutputSerializer().fields)


@pytest.mark.django_db
def test_a_purchase_through_the_hand_checked_path_is_recorded_as_through_the_serializer(terminal_client, member):
    # a body of the three keys (hand-checked) and one with a fourth (the serializer) record alike
    fast = terminal_client.post(
        "/api/v1/terminal/purchases", {"member": member.member_no, "receipt_no": "R-1", "amount": "128.5"}, format="json"
    )
    slow = _buy(terminal_client, member.member_no, "R-2", "128.5")
    assert (fast.status_code, slow.status_code) == (201, 201), (fast.content, slow.content)
    one, two = fast.json(), slow.json()
    assert one.pop("receipt_no") == "R-1"
    assert two.pop("receipt_no") == "R-2"
    assert (one.pop("balance"), two.pop("balance")) == (128, 256)
    assert (one.pop("spendable"), two.pop("spendable")) == (128, 256)
    assert one == two
    assert one["amount"] == "128.50"
    assert one["points_earned"] == 128
    rows = Purchase.objects.order_by("pk").values_list("receipt_no", "amount", "points_earned", "lines", "paid_at")
    (_, a1, p1, l1, t1), (_, a2, p2, l2, t2) = rows
    assert (a1, p1, l1) == (a2, p2, l2) == (Decimal("128.50"), 128, [])
    assert t1 is not None
    assert t2 is not None


@pytest.mark.django_db
def test_a_hand_checked_body_with_an_unknown_member_is_refused_as_before(terminal_client):
    response = terminal_client.post(
        "/api/v1/terminal/purchases", {"member": "9999999999", "receipt_no": "R-1", "amount": "10.00"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "member_not_found"
    assert not Purchase.objects.exists()
