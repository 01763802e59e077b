"""Staff sign-in forms of the admin and the clerk console, with the failed
sign-in throttle of ``loyalty.throttle`` (per user name and client address)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from loyalty.errors import TooManyAttempts
from loyalty.throttle import login_failure_record, login_failures_clear, login_throttled


def client_ip(request: Any) -> str:
    """The peer address. ``X-Forwarded-For`` is not read: a client could set it
    to get a fresh count on every try. Behind a proxy the count is then per user
    name, which is still a throttle."""
    return (request.META.get("REMOTE_ADDR") if request is not None else "") or "-"


class LoginThrottleMixin:
    """Refuses a sign-in once the user name has failed too often from this
    address, before the password is even checked; counts and logs each wrong
    password; a successful sign-in clears the count."""

    request: Any
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request)
        if username and login_throttled(username=username, ip=ip):
            login_failure_record(username=username, ip=ip)
            error = TooManyAttempts(retry_after=settings.LOYALTY_LOGIN_FAILURES_WINDOW_SECONDS)
            raise forms.ValidationError(error.render_message(), code=error.code)
        try:
            cleaned = super().clean()  # type: ignore[misc]
        except forms.ValidationError as exc:
            if username and exc.code == "invalid_login":
                login_failure_record(username=username, ip=ip)
            raise
        if username:
            login_failures_clear(username=username, ip=ip)
        return cleaned


class ThrottledAuthenticationForm(LoginThrottleMixin, AuthenticationForm):
    """The clerk console's sign-in form."""


class ThrottledAdminAuthenticationForm(LoginThrottleMixin, AdminAuthenticationForm):
    """The admin's sign-in form (``admin.site.login_form``)."""
