"""Every write to members, tiers, stores and terminals goes through here."""

from __future__ import annotations

import hashlib
import secrets
from datetime import date, datetime, timedelta
from typing import Any

import phonenumbers
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from members.errors import (
    InvalidPhone,
    InvalidTier,
    MemberClosed,
    MemberStatusUnchanged,
    PhoneTakenByOther,
    ReasonRequired,
    TerminalRevoked,
    UnknownStore,
    WechatAlreadyBound,
    WechatOpenidTaken,
)
from members.models import Member, MemberEvent, MemberToken, Store, Terminal, TerminalAPIKey, Tier, TierChange

MEMBER_NO_PREFIX = "8"


# -----------------------------------------------------------------------------
# Values
# -----------------------------------------------------------------------------
def phone_normalise(raw: str) -> str:
    """A mobile phone in E.164 (``+8613812345678``); full-width digits, spaces
    and dashes are accepted. Raises ``InvalidPhone``."""
    text = (raw or "").strip()
    if not text or len(text) > 32:
        raise InvalidPhone(phone=text[:32])
    try:
        number = phonenumbers.parse(text, settings.LOYALTY_PHONE_REGION)
    except phonenumbers.NumberParseException:
        raise InvalidPhone(phone=text) from None
    mobile_types = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
    if not phonenumbers.is_valid_number(number) or phonenumbers.number_type(number) not in mobile_types:
        raise InvalidPhone(phone=text)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def luhn_check_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return number.isdigit() and len(number) > 1 and luhn_check_digit(number[:-1]) == number[-1]


def member_no_allocate(count: int = 1) -> list[str]:
    """Next printable member numbers: prefix, 8-digit sequence, Luhn check digit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('members_member_no_seq') FROM generate_series(1, %s)", [count])
        values = [row[0] for row in cursor.fetchall()]
    numbers = []
    for value in values:
        body = f"{MEMBER_NO_PREFIX}{value:08d}"
        numbers.append(body + luhn_check_digit(body))
    return numbers


def code_secret_new() -> str:
    return secrets.token_hex(20)


# Referral codes: short, unambiguous, case-insensitive.
REFERRAL_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def referral_code_new() -> str:
    return "".join(secrets.choice(REFERRAL_ALPHABET) for _ in range(8))


def referrer_for_code(code: str | None) -> Member | None:
    """The active member whose referral code this is. Raises ``InvalidReferralCode``."""
    from members.errors import InvalidReferralCode

    code = (code or "").strip().upper()
    if not code:
        return None
    referrer = Member.objects.filter(referral_code=code, status=Member.Status.ACTIVE).first()
    if referrer is None:
        raise InvalidReferralCode()
    return referrer


@transaction.atomic
def member_referral_code(*, member: Member) -> str:
    """The member's referral code, created on first use."""
    if member.referral_code:
        return member.referral_code
    for _ in range(5):
        code = referral_code_new()
        if Member.objects.filter(pk=member.pk, referral_code__isnull=True).update(referral_code=code):
            member.referral_code = code
            return code
        member.refresh_from_db(fields=["referral_code"])
        if member.referral_code:
            return member.referral_code
    raise RuntimeError("could not allocate a referral code")


def tier_entry() -> Tier:
    return Tier.objects.filter(is_active=True).order_by("rank").first() or Tier.objects.order_by("rank").first()


# -----------------------------------------------------------------------------
# Stores and terminals
# -----------------------------------------------------------------------------
@transaction.atomic
def store_get_or_create(*, code: str, name: str = "") -> tuple[Store, bool]:
    code = code.strip()
    if not code:
        raise UnknownStore(store=code)
    return Store.objects.get_or_create(code=code, defaults={"name": name or code})


@transaction.atomic
def terminal_create(*, store: Store, name: str) -> tuple[Terminal, str]:
    """Create a terminal and its API key; returns the plain key, which is not stored."""
    terminal = Terminal.objects.create(store=store, name=name)
    _, key = TerminalAPIKey.objects.create_key(name=f"{store.code}/{name}", terminal=terminal)
    return terminal, key


@transaction.atomic
def terminal_key_rotate(*, terminal: Terminal) -> str:
    """Revoke every key of ``terminal`` and issue a new one. Raises
    ``TerminalRevoked`` for a disabled terminal (its keys would be refused)."""
    if not terminal.is_active:
        raise TerminalRevoked()
    TerminalAPIKey.objects.filter(terminal=terminal, revoked=False).update(revoked=True)
    _, key = TerminalAPIKey.objects.create_key(name=f"{terminal.store.code}/{terminal.name}", terminal=terminal)
    return key


@transaction.atomic
def terminal_revoke(*, terminal: Terminal) -> Terminal:
    """Disable a terminal at once: its keys are refused from the next request."""
    TerminalAPIKey.objects.filter(terminal=terminal, revoked=False).update(revoked=True)
    terminal.is_active = False
    terminal.save(update_fields=["is_active", "updated_at"])
    return terminal


# -----------------------------------------------------------------------------
# Members
# -----------------------------------------------------------------------------
def _differs(existing: Any, given: Any) -> bool:
    return bool(given) and bool(existing) and existing != given


@transaction.atomic
def member_enrol(
    *,
    phone: str,
    name: str = "",
    birthday: date | None = None,
    gender: str = Member.Gender.UNKNOWN,
    store: Store | None = None,
    channel: str = Member.Channel.STORE,
    referrer: Member | None = None,
    marketing_consent: bool = False,
    wechat_openid: str | None = None,
    by_terminal: Terminal | None = None,
    by_user: AbstractBaseUser | None = None,
) -> tuple[Member, bool]:
    """Enrol a member, or return the existing one with this phone.

    Idempotent on the normalised phone: a second enrolment with the same or
    fewer details returns ``(member, False)``. Raises ``InvalidPhone``, and
    ``PhoneTakenByOther`` when the phone belongs to a member whose name or
    birthday differ from the ones given.
    """
    normalised = phone_normalise(phone)
    name = (name or "").strip()
    existing = Member.objects.select_related("tier").filter(phone=normalised).first()
    if existing is None:
        try:
            with transaction.atomic():
                member = _member_insert(
                    phone=normalised,
                    name=name,
                    birthday=birthday,
                    gender=gender,
                    store=store,
                    channel=channel,
                    referrer=referrer,
                    marketing_consent=marketing_consent,
                    wechat_openid=wechat_openid,
                    by_terminal=by_terminal,
                    by_user=by_user,
                )
            from campaigns.services.campaigns import campaigns_after_profile  # campaigns depends on members

            campaigns_after_profile(member=member)
            return member, True
        except IntegrityError:
            # A concurrent enrolment with the same phone won the race.
            existing = Member.objects.select_related("tier").filter(phone=normalised).first()
            if existing is None:
                raise
    if _differs(existing.name, name) or _differs(existing.birthday, birthday):
        raise PhoneTakenByOther(detail={"member_no": existing.member_no})
    if existing.status == Member.Status.CLOSED:
        raise MemberClosed()
    return existing, False


def _member_insert(*, by_terminal: Terminal | None, by_user: AbstractBaseUser | None, **fields: Any) -> Member:
    tier = tier_entry()
    now = timezone.now()
    (member_no,) = member_no_allocate()
    member = Member.objects.create(
        member_no=member_no,
        registration_store=fields.pop("store"),
        tier=tier,
        tier_since=now,
        code_secret=code_secret_new(),
        referral_code=referral_code_new(),
        **fields,
    )
    TierChange.objects.create(member=member, from_tier=None, to_tier=tier, reason=TierChange.Reason.ENROLMENT)
    from campaigns.services.webhooks import webhook_member_enrolled  # campaigns depends on members

    webhook_member_enrolled(member)
    MemberEvent.objects.create(
        member=member,
        kind=MemberEvent.Kind.ENROLLED,
        data={"channel": member.channel},
        by_terminal=by_terminal,
        by_user=by_user if by_user is not None and by_user.is_authenticated else None,
    )
    return member


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    return reason


def _member_lock(member: Member) -> Member:
    from members.locks import member_qs_for_update

    return member_qs_for_update().get(pk=member.pk)


@transaction.atomic
def member_freeze(*, member: Member, by_user: AbstractBaseUser | None, reason: str) -> Member:
    """Freeze an active member: they can be identified but not earn or spend.
    Raises ``ReasonRequired``, ``MemberClosed``, ``MemberStatusUnchanged``."""
    reason = _require_reason(reason)
    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    if member.status == Member.Status.FROZEN:
        raise MemberStatusUnchanged(status=Member.Status.FROZEN.label)
    member.status = Member.Status.FROZEN
    member.save(update_fields=["status", "updated_at"])
    MemberEvent.objects.create(member=member, kind=MemberEvent.Kind.FROZEN, reason=reason, by_user=by_user)
    return member


@transaction.atomic
def member_unfreeze(*, member: Member, by_user: AbstractBaseUser | None, reason: str) -> Member:
    reason = _require_reason(reason)
    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    if member.status == Member.Status.ACTIVE:
        raise MemberStatusUnchanged(status=Member.Status.ACTIVE.label)
    member.status = Member.Status.ACTIVE
    member.save(update_fields=["status", "updated_at"])
    MemberEvent.objects.create(member=member, kind=MemberEvent.Kind.UNFROZEN, reason=reason, by_user=by_user)
    return member


@transaction.atomic
def member_close(*, member: Member, by_user: AbstractBaseUser | None, reason: str) -> Member:
    """Close a member: erase phone, name, birthday and WeChat binding, revoke
    tokens and rotate the code secret; the member number (and the ledger) stay.
    Raises ``ReasonRequired``, ``MemberClosed`` if already closed."""
    reason = _require_reason(reason)
    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    member.status = Member.Status.CLOSED
    member.phone = None
    member.name = ""
    member.birthday = None
    member.gender = Member.Gender.UNKNOWN
    member.wechat_openid = None
    member.marketing_consent = False
    member.code_secret = code_secret_new()
    member.closed_at = timezone.now()
    member.save()
    MemberToken.objects.filter(member=member, revoked_at__isnull=True).update(revoked_at=timezone.now())
    member.tags.clear()  # tags may describe the person
    # Earlier events may hold personal data in their data field: erase it too.
    MemberEvent.objects.filter(member=member).exclude(data={}).update(data={})
    MemberEvent.objects.create(member=member, kind=MemberEvent.Kind.CLOSED, reason=reason, by_user=by_user)
    return member


@transaction.atomic
def member_set_tier(
    *,
    member: Member,
    tier: Tier,
    by_user: AbstractBaseUser | None,
    reason: str,
    override_until: datetime | None = None,
) -> Member:
    """Manually set a member's tier, optionally kept until ``override_until``
    (not downgraded by evaluation before then). Raises ``ReasonRequired``,
    ``MemberClosed``, ``MemberStatusUnchanged`` when the tier is the same."""
    reason = _require_reason(reason)
    if not tier.is_active:
        raise InvalidTier(tier=tier.code)
    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    if member.tier_id == tier.pk and member.tier_override_until == override_until:
        raise MemberStatusUnchanged(status=tier.name)
    previous = member.tier
    member.tier = tier
    member.tier_since = timezone.now()
    member.tier_override_until = override_until
    member.save(update_fields=["tier", "tier_since", "tier_override_until", "updated_at"])
    TierChange.objects.create(
        member=member,
        from_tier=previous,
        to_tier=tier,
        reason=TierChange.Reason.MANUAL,
        note=reason,
        override_until=override_until,
        by_user=by_user,
    )
    MemberEvent.objects.create(
        member=member,
        kind=MemberEvent.Kind.TIER_CHANGED,
        reason=reason,
        data={"from": previous.code, "to": tier.code},
        by_user=by_user,
    )
    # campaigns depends on members: imported here.
    from campaigns.services.issuing import tier_privileges_grant
    from campaigns.services.notifications import notify_tier_changed
    from campaigns.services.webhooks import webhook_tier_changed

    if tier.rank > previous.rank and member.status == Member.Status.ACTIVE:
        tier_privileges_grant(member=member, tier=tier)
    notify_tier_changed(member, previous, tier, at=member.tier_since)
    webhook_tier_changed(member, previous, tier, reason=TierChange.Reason.MANUAL, at=member.tier_since)
    return member


@transaction.atomic
def member_update_profile(
    *,
    member: Member,
    name: str | None = None,
    birthday: date | None = None,
    gender: str | None = None,
    marketing_consent: bool | None = None,
) -> Member:
    """A member edits their own profile (the mini-program). A birthday, once
    set, cannot be changed here (birthday gifts would be gamed): that needs an
    operator. Raises ``MemberClosed``, ``BirthdayLocked``."""
    from members.errors import BirthdayLocked

    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    changed: dict[str, Any] = {}
    if name is not None and name.strip() != member.name:
        changed["name"] = name.strip()
    if birthday is not None and birthday != member.birthday:
        if member.birthday is not None:
            raise BirthdayLocked()
        changed["birthday"] = birthday
    if gender is not None and gender != member.gender:
        changed["gender"] = gender
    if marketing_consent is not None and marketing_consent != member.marketing_consent:
        changed["marketing_consent"] = marketing_consent
    if not changed:
        return member
    for field_name, value in changed.items():
        setattr(member, field_name, value)
    member.save(update_fields=[*changed, "updated_at"])
    MemberEvent.objects.create(
        member=member, kind=MemberEvent.Kind.PROFILE_UPDATED, data={"fields": sorted(changed)}
    )
    from campaigns.services.campaigns import campaigns_after_profile  # campaigns depends on members

    campaigns_after_profile(member=member)
    return member


@transaction.atomic
def member_bind_wechat(*, member: Member, openid: str) -> Member:
    """Bind a WeChat openid to a member. Raises ``WechatAlreadyBound`` when the
    member is bound to another openid, ``WechatOpenidTaken`` when the openid is
    bound to another member, ``MemberClosed``."""
    member = _member_lock(member)
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    if member.wechat_openid == openid:
        return member
    if member.wechat_openid:
        raise WechatAlreadyBound()
    if Member.objects.filter(wechat_openid=openid).exists():
        raise WechatOpenidTaken()
    member.wechat_openid = openid
    member.save(update_fields=["wechat_openid", "updated_at"])
    MemberEvent.objects.create(member=member, kind=MemberEvent.Kind.WECHAT_BOUND)
    return member


# -----------------------------------------------------------------------------
# Member tokens
# -----------------------------------------------------------------------------
def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def member_token_issue(*, member: Member, ttl: timedelta | None = None) -> tuple[MemberToken, str]:
    """Issue a bearer token; returns the plain token (``<prefix>.<secret>``), which is not stored."""
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    ttl = ttl or timedelta(days=settings.LOYALTY_MEMBER_TOKEN_TTL_DAYS)
    token = MemberToken.objects.create(
        member=member, prefix=prefix, key_hash=token_hash(secret), expires_at=timezone.now() + ttl
    )
    return token, f"{prefix}.{secret}"


@transaction.atomic
def member_token_revoke(*, token: MemberToken) -> MemberToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
