"""Reads of balances, ledger and lots. (Filled in by the points ledger.)"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from members.models import Member, Store


def points_summary_get(*, member: Member) -> dict[str, Any]:
    return {"balance": 0, "pending": 0, "cash_value": Decimal("0.00"), "expiring_30d": 0, "expiring": []}


def coupons_usable_get(*, member: Member, store: Store | None) -> list[dict[str, Any]]:
    return []


def qualifying_spend_get(*, member: Member) -> Decimal:
    return Decimal("0.00")
