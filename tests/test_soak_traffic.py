"""The soak's traffic never asks for more points than a member surely has.

A preview or a purchase paying with points that asks for more than the
balance gets ``409 insufficient_points``: a right answer of the system, but
an error in the soak's count. CI once failed on one such preview (the member
had spent its opening balance on earlier purchases of the run), so the
traffic books every ``points_to_use`` it sends against the opening balance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tests.scripts_import import script_module

lk = script_module("loadkit")
soak = script_module("soak")


class Codes:
    """A member code per call; every call is a new step, so a code is always fresh."""

    def __init__(self) -> None:
        self.step = 0

    def code_for(self, *, member_no: str, secret: str) -> tuple[str, int]:
        return f"code-{member_no}", self.step

    def step_at(self, _when: Any) -> int:
        self.step += 1
        return self.step


@dataclass
class Till:
    """Answers every request with 200 and keeps the bodies."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        self.sent.append((path, body))
        return lk.Reply(status=200, seconds=0.001)


def test_points_asked_never_exceed_the_opening_balance_less_points_spent():
    # given one member with 50,000 points and a traffic of previews and purchases paying with points
    data = {"keys": ["k"], "members": [{"no": "M1", "secret": "s"}], "coupons": []}
    traffic = soak.Traffic(0, data, Codes(), "T", 50_000, mix={"preview": 1, "purchase_points": 1})
    till, rng = Till(), random.Random(7)
    # when it sends 400 requests (each purchase up to ¥600, up to 30,000 points)
    for _ in range(400):
        traffic.request(till, rng)

    # then no request asked for more than was left, and the balance was used up
    left, asked_beyond = 50_000, []
    for path, body in till.sent:
        if body.get("points_to_use", 0) > left:
            asked_beyond.append(body)
        if path == "/api/v1/terminal/purchases" and "points_to_use" in body:
            left -= body["points_to_use"]
    assert asked_beyond == []
    assert left == 0
    assert traffic.fallbacks["purchase_points"] > 0
