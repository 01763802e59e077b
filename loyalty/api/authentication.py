"""Authentication of terminals (``Api-Key``) and members (``Bearer``).

Both keys are high-entropy secrets stored hashed (SHA-512 / SHA-256) and found
by their public prefix in one query.
"""

from __future__ import annotations

import hmac

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from loyalty.sql import select_one
from members.models import Member, MemberToken, Terminal, TerminalAPIKey


def _credentials(request: Request, keyword: str) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _sep, value = header.partition(" ")
    if scheme.lower() != keyword.lower():
        return None
    value = value.strip()
    if not value:
        raise exceptions.AuthenticationFailed(_("Invalid authorization header: no credentials."))
    if not value.isascii() or not value.isprintable():
        # Keys and tokens are printable ASCII; anything else (NUL, which
        # PostgreSQL text cannot hold, among others) is refused before a query.
        raise exceptions.AuthenticationFailed(_("Invalid authorization header: the credentials contain invalid characters."))
    return value


class TerminalApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Terminal, TerminalAPIKey] | None:
        key = _credentials(request, self.keyword)
        if key is None:
            return None
        prefix, _dot, _secret = key.partition(".")
        api_key = select_one(TerminalAPIKey, related=("terminal__store",), prefix=prefix, revoked=False)
        if (
            api_key is None
            or not api_key.is_valid(key)
            or api_key.has_expired
            or not api_key.terminal.is_active
            or not api_key.terminal.store.is_active
        ):
            raise exceptions.AuthenticationFailed(_("Invalid or revoked API key."))
        return api_key.terminal, api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class MemberTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Member, MemberToken] | None:
        from members.services import token_hash

        value = _credentials(request, self.keyword)
        if value is None:
            return None
        prefix, _dot, secret = value.partition(".")
        token = select_one(MemberToken, related=("member__tier",), prefix=prefix, revoked_at=None)
        if (
            token is None
            or not hmac.compare_digest(token.key_hash, token_hash(secret))
            or token.expires_at <= timezone.now()
            or token.member.status == Member.Status.CLOSED
        ):
            raise exceptions.AuthenticationFailed(_("Invalid, expired or revoked member token."))
        return token.member, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ClerkSessionAuthentication(authentication.SessionAuthentication):
    """The clerk console: a signed-in clerk bound to a store acts as that
    store's ``console`` terminal, through the same terminal API (CSRF enforced)."""

    def authenticate(self, request: Request) -> tuple[Terminal, None] | None:
        user = getattr(request._request, "user", None)
        if user is None or not user.is_active or not user.is_authenticated:
            return None
        from members.selectors import clerk_terminal_for

        terminal = clerk_terminal_for(user)
        if terminal is None:
            return None
        self.enforce_csrf(request)
        return terminal, None


# Terminal API: POS integrations by API key, the clerk console by session.
TERMINAL_AUTHENTICATION = [TerminalApiKeyAuthentication, ClerkSessionAuthentication]
