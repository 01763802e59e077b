"""The rotating member code shown as a QR code and typed by a keyboard-wedge scanner.

Layout (18 digits, all numeric so any scanner can type it)::

    <member number: 10 digits><step hint: 2 digits><one-time password: 6 digits>

The one-time password is HOTP (RFC 4226 dynamic truncation over HMAC-SHA256)
of the time step ``floor(unix_time / step)``, keyed by
``HMAC(server secret, member number + per-member secret)``: it cannot be forged
without the server's secret, and closing a member rotates their secret. The
step hint (the step number modulo 100) lets the server find the exact step a
code was made for with one HMAC, so an old code is told apart from a forged
one (410 ``code_expired`` versus 400 ``invalid_member_code``).

A code is valid during its own step and one step either side (clock skew of
the member's phone). A purchase queued offline may carry a code up to
``LOYALTY_OFFLINE_CODE_DELAY_SECONDS`` late if ``paid_at`` falls in the code's
window; such a use is flagged ``offline``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

MEMBER_NO_LENGTH = 10
HINT_MODULO = 100
OTP_DIGITS = 6
CODE_LENGTH = MEMBER_NO_LENGTH + 2 + OTP_DIGITS


@dataclass(frozen=True)
class CodeParts:
    member_no: str
    hint: int
    otp: str


@dataclass(frozen=True)
class CodeCheck:
    """Outcome of checking a code's one-time password against a member."""

    valid: bool
    expired: bool
    step: int
    offline: bool = False


def _step_seconds() -> int:
    return settings.LOYALTY_MEMBER_CODE_STEP_SECONDS


def step_at(moment: datetime) -> int:
    return int(moment.timestamp()) // _step_seconds()


def _otp(member_no: str, secret: str, step: int) -> str:
    key = hmac.new(
        settings.LOYALTY_MEMBER_CODE_SECRET.encode(), f"{member_no}:{secret}".encode(), hashlib.sha256
    ).digest()
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha256).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**OTP_DIGITS).zfill(OTP_DIGITS)


def code_for(*, member_no: str, secret: str, at: datetime | None = None) -> tuple[str, int]:
    """The code a member shows at ``at`` and the seconds until the next one."""
    moment = at or timezone.now()
    step = step_at(moment)
    code = f"{member_no}{step % HINT_MODULO:02d}{_otp(member_no, secret, step)}"
    seconds_to_live = _step_seconds() - int(moment.timestamp()) % _step_seconds()
    return code, seconds_to_live


def parse(code: str) -> CodeParts | None:
    """Split a scanned string into its parts, or None if it is not a member code."""
    code = code.strip()
    if len(code) != CODE_LENGTH or not code.isascii() or not code.isdigit():
        return None
    return CodeParts(
        member_no=code[:MEMBER_NO_LENGTH],
        hint=int(code[MEMBER_NO_LENGTH : MEMBER_NO_LENGTH + 2]),
        otp=code[MEMBER_NO_LENGTH + 2 :],
    )


def _step_from_hint(hint: int, reference_step: int) -> int:
    """The step nearest to ``reference_step`` whose value modulo 100 is ``hint``."""
    candidate = reference_step - (reference_step - hint) % HINT_MODULO
    if reference_step - candidate > HINT_MODULO // 2:
        candidate += HINT_MODULO
    return candidate


def check(parts: CodeParts, *, secret: str, now: datetime | None = None, paid_at: datetime | None = None) -> CodeCheck:
    """Check ``parts`` for the member whose secret is ``secret``.

    ``paid_at`` (a purchase's own time) lets a queued offline purchase use the
    code that was current when it was paid, if it reaches the server within
    the configured delay.
    """
    now = now or timezone.now()
    now_step = step_at(now)
    step = _step_from_hint(parts.hint, now_step)
    if not hmac.compare_digest(_otp(parts.member_no, secret, step), parts.otp):
        # A queued purchase may arrive more than HINT_MODULO / 2 steps late
        # (the offline delay is configurable): read the hint near its paid_at.
        paid_hint_step = _step_from_hint(parts.hint, step_at(paid_at)) if paid_at is not None else step
        if paid_hint_step == step or not hmac.compare_digest(_otp(parts.member_no, secret, paid_hint_step), parts.otp):
            return CodeCheck(valid=False, expired=False, step=step)
        step = paid_hint_step
    if abs(step - now_step) <= 1:
        return CodeCheck(valid=True, expired=False, step=step)
    if paid_at is not None and step < now_step:
        delay = (now - paid_at).total_seconds()
        paid_step = step_at(paid_at)
        if 0 <= delay <= settings.LOYALTY_OFFLINE_CODE_DELAY_SECONDS and abs(step - paid_step) <= 1:
            return CodeCheck(valid=True, expired=False, step=step, offline=True)
    return CodeCheck(valid=False, expired=True, step=step)
