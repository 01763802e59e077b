"""Reads of members, tiers and terminals."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from django.db.models import QuerySet
from django.utils import timezone

from loyalty.sql import select_one, select_one_with
from loyalty.throttle import failure_record, failures_check
from members import codes
from members.errors import InvalidMemberCode, InvalidPhone, MemberCodeExpired, MemberNotFound
from members.models import Member, Terminal, Tier

logger = logging.getLogger(__name__)


class AlongWith(Protocol):
    """What to read in the same statement as the member (``loyalty.sql.select_one_with``):
    SQL columns keyed on ``t0.id``, their parameters, and how to read their values."""

    columns: str

    @property
    def params(self) -> list[Any]: ...

    def read(self, values: tuple[Any, ...]) -> Any: ...


@dataclass(frozen=True)
class IdentifiedMember:
    member: Member
    code_step: int | None  # None when identified by member number or phone
    offline: bool = False
    along: Any = None  # what ``along_with`` read with the member, when asked

    @property
    def by_code(self) -> bool:
        return self.code_step is not None


def _failures_check(terminal: Terminal) -> None:
    failures_check(kind="identify", terminal=terminal)


def _failure_record(terminal: Terminal, reason: str) -> None:
    failure_record(kind="identify", terminal=terminal, reason=reason)


def _member_with(along_with: AlongWith | None, **filters: Any) -> tuple[Member | None, Any]:
    """A member with its tier, and what ``along_with`` asks for, in one statement."""
    if along_with is None:
        return select_one(Member, related=("tier",), **filters), None
    member, values = select_one_with(
        Member, extra=along_with.columns, extra_params=along_with.params, related=("tier",), **filters
    )
    return member, along_with.read(values) if member is not None else None


def member_get_by_code(
    *,
    code: str,
    terminal: Terminal | None = None,
    paid_at: datetime | None = None,
    now: datetime | None = None,
    along_with: AlongWith | None = None,
) -> IdentifiedMember:
    """Resolve a scanned member code (one query, with ``along_with``'s columns
    if given). Raises ``InvalidMemberCode`` (forged, unknown or garbled),
    ``MemberCodeExpired`` (a real but old code) and, after too many failures
    from one terminal, ``TooManyAttempts``."""
    if terminal is not None:
        _failures_check(terminal)
    parts = codes.parse(code)
    member = along = None
    if parts is not None:
        member, along = _member_with(along_with, member_no=parts.member_no)
    if parts is None or member is None or member.status == Member.Status.CLOSED:
        if terminal is not None:
            _failure_record(terminal, "unknown")
        raise InvalidMemberCode()
    result = codes.check(parts, secret=member.code_secret, now=now, paid_at=paid_at)
    if result.expired:
        raise MemberCodeExpired()
    if not result.valid:
        if terminal is not None:
            _failure_record(terminal, "forged")
        raise InvalidMemberCode()
    return IdentifiedMember(member=member, code_step=result.step, offline=result.offline, along=along)


def member_get_by_identifier(*, identifier: str) -> Member:
    """A member by member number or phone (what a clerk may type). Raises ``MemberNotFound``."""
    return _member_by_identifier(identifier, None)[0]


def _member_by_identifier(identifier: str, along_with: AlongWith | None) -> tuple[Member, Any]:
    from members.services import phone_normalise

    identifier = (identifier or "").strip()
    member = along = None
    if identifier.isascii() and identifier.isdigit() and len(identifier) == codes.MEMBER_NO_LENGTH:
        member, along = _member_with(along_with, member_no=identifier)
    if member is None:
        try:
            phone = phone_normalise(identifier)
        except InvalidPhone:
            phone = None
        if phone:
            member, along = _member_with(along_with, phone=phone)
    if member is None or member.status == Member.Status.CLOSED:
        raise MemberNotFound()
    return member, along


def member_resolve(
    *,
    value: str,
    terminal: Terminal | None = None,
    paid_at: datetime | None = None,
    along_with: AlongWith | None = None,
) -> IdentifiedMember:
    """A scanned code (18 digits) or a typed member number / phone; with
    ``along_with``, what it asks for is read in the member's statement
    (``IdentifiedMember.along``).

    Typed values count towards the terminal's failure limit like codes do:
    otherwise a terminal could enumerate phone numbers unthrottled."""
    value = (value or "").strip()
    if len(value) == codes.CODE_LENGTH and value.isascii() and value.isdigit():
        return member_get_by_code(code=value, terminal=terminal, paid_at=paid_at, along_with=along_with)
    if terminal is not None:
        _failures_check(terminal)
    try:
        member, along = _member_by_identifier(value, along_with)
    except MemberNotFound:
        if terminal is not None:
            _failure_record(terminal, "not_found")
        raise
    return IdentifiedMember(member=member, code_step=None, along=along)


def member_list() -> QuerySet[Member]:
    return Member.objects.select_related("tier", "registration_store")


def tier_list() -> list[Tier]:
    return list(Tier.objects.filter(is_active=True).order_by("rank"))


def tier_next(tier: Tier) -> Tier | None:
    return Tier.objects.filter(is_active=True, rank__gt=tier.rank).order_by("rank").first()


def tier_for_spend(spend: Decimal) -> Tier:
    """The highest active tier whose threshold ``spend`` reaches."""
    tier = Tier.objects.filter(is_active=True, threshold__lte=spend).order_by("-rank").first()
    if tier is None:
        tier = Tier.objects.order_by("rank").first()
    assert tier is not None, "the tier data migration creates the default tiers"
    return tier


def member_code_current(*, member: Member, at: datetime | None = None) -> tuple[str, int]:
    return codes.code_for(member_no=member.member_no, secret=member.code_secret, at=at or timezone.now())


CONSOLE_TERMINAL_NAME = "console"


def clerk_store_for(user: object) -> object | None:
    """The store a staff user works at (``StaffProfile``), if any."""
    profile = getattr(user, "staff_profile", None)
    store = getattr(profile, "store", None)
    return store if store is not None and store.is_active else None


def clerk_terminal_for(user: object) -> Terminal | None:
    """The console terminal of the clerk's store (created on first use), or
    None when the user is not a clerk (needs the "use the clerk console" permission and a store)."""
    if not getattr(user, "has_perm", None) or not user.has_perm("members.use_console"):  # type: ignore[attr-defined]
        return None
    store = clerk_store_for(user)
    if store is None:
        return None
    terminal, _ = Terminal.objects.select_related("store").get_or_create(store=store, name=CONSOLE_TERMINAL_NAME)
    if not terminal.is_active:
        return None
    return terminal
