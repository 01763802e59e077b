"""Pluggable channels that deliver member messages (SMS, WeChat, app push, log).

A channel is any object with a ``name`` and ``send(message: OutgoingMessage)
-> str`` (the provider's reference, or ""). It does not touch the database:
``campaigns.services.notifications`` locks the outbox row, builds the
``OutgoingMessage`` (text already rendered in ``LANGUAGE_CODE``), calls
``send`` and records the outcome:

* a return value: sent;
* ``RecipientUnavailable``: the member cannot be reached on this channel (no
  phone, no WeChat openid): skipped, with the reason;
* ``ChannelError(permanent=True)`` or ``ImproperlyConfigured``: failed at once
  (an operator fixes the cause and uses "retry" in admin);
* any other exception: retried with backoff, then failed.

``LOYALTY_MESSAGE_CHANNEL`` names the channel of new messages: ``log`` (the
default), ``sms``, ``wechat`` or ``push``; the name is stored on each message
(so queued messages keep their channel when the setting changes). A custom
adapter is added to ``CHANNELS`` under a name of at most 16 characters (from
an ``AppConfig.ready``). The HTTP channels post to a generic JSON gateway (see
``HttpGatewayChannel``); each is configured by its own URL and key settings
and raises ``ImproperlyConfigured`` at send time when they are empty.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django.utils.translation import gettext

# Name (as stored on each message, at most 16 characters) → class.
CHANNELS = {
    "log": "campaigns.channels.log.LogChannel",
    "sms": "campaigns.channels.sms.SmsChannel",
    "wechat": "campaigns.channels.wechat.WechatChannel",
    "push": "campaigns.channels.push.PushChannel",
}
# Bytes of a gateway's response kept for the error log.
RESPONSE_EXCERPT_BYTES = 500


@dataclass(frozen=True)
class OutgoingMessage:
    """What a channel needs to deliver one message; built under the outbox row lock."""

    message_id: int
    # Stable across retries: gateways use it to drop a repeat after a lost reply.
    idempotency_key: str
    kind: str
    text: str
    member_no: str
    phone: str | None = None
    wechat_openid: str | None = None
    marketing: bool = False
    data: dict[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    name: str

    def send(self, message: OutgoingMessage) -> str:
        """Deliver ``message``; return the provider's reference ("" if none)."""
        ...


class ChannelError(Exception):
    """Delivery failed. ``permanent``: retrying cannot help (4xx, bad recipient)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RecipientUnavailable(ChannelError):
    """The member has no address on this channel; the message is skipped."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def channel_get(name: str) -> Channel:
    """The channel registered as ``name``. Raises ``ImproperlyConfigured``."""
    path = CHANNELS.get(name)
    if path is None:
        raise ImproperlyConfigured(
            gettext("Unknown message channel “%(name)s”: use one of %(names)s.")
            % {"name": name, "names": ", ".join(sorted(CHANNELS))}
        )
    try:
        return import_string(path)()
    except ImportError as exc:
        raise ImproperlyConfigured(
            gettext("Message channel “%(name)s” cannot be loaded: %(error)s") % {"name": name, "error": exc}
        ) from exc


# -----------------------------------------------------------------------------
# HTTP (shared by the gateway channels and the webhooks)
# -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not an instruction: following it could carry a
    signed body or an API key to a host nobody configured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, *, body: bytes, headers: dict[str, str], timeout: float) -> HttpResponse:
    """POST ``body`` to an http(s) ``url``; any HTTP status is returned, not raised.

    Raises ``ChannelError`` (permanent) for another scheme, ``OSError`` /
    ``urllib.error.URLError`` for network failures and timeouts."""
    if not url.lower().startswith(("http://", "https://")):
        raise ChannelError(gettext("Only http and https URLs are allowed."), permanent=True)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (scheme checked)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return HttpResponse(response.status, _excerpt(response.read(RESPONSE_EXCERPT_BYTES)))
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpResponse(exc.code, _excerpt(exc.read(RESPONSE_EXCERPT_BYTES)))


def _excerpt(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def json_body(data: dict[str, Any]) -> bytes:
    """Compact, key-sorted UTF-8 JSON: the same data always gives the same bytes."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str).encode()


# -----------------------------------------------------------------------------
# The generic JSON gateway behind the sms, wechat and push channels
# -----------------------------------------------------------------------------
# Statuses worth retrying; any other 4xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


class HttpGatewayChannel:
    """Posts each message as JSON to a gateway (the chain's SMS provider, its
    WeChat subscription-message relay or its push service)::

        POST <url>
        Authorization: Bearer <key>
        Idempotency-Key: <outbox message key>      (the same on every retry)
        Content-Type: application/json

        {"channel": "sms", "message_id": "<key>", "kind": "points_earned",
         "to": "<phone | openid | member number>", "text": "<rendered text>",
         "data": {<the message payload>}, "marketing": false}

    2xx is sent (an ``id`` in a JSON answer is logged as the reference);
    408, 425, 429, 5xx and network errors are retried; any other status fails
    the message at once. Subclasses name their settings and their recipient.
    """

    name = ""
    url_setting = ""
    key_setting = ""

    def recipient(self, message: OutgoingMessage) -> str:
        raise NotImplementedError

    def send(self, message: OutgoingMessage) -> str:
        from django.conf import settings

        url = getattr(settings, self.url_setting, "")
        key = getattr(settings, self.key_setting, "")
        if not url or not key:
            raise ImproperlyConfigured(
                gettext("The %(channel)s channel is not configured: set %(url)s and %(key)s.")
                % {"channel": self.name, "url": self.url_setting, "key": self.key_setting}
            )
        recipient = self.recipient(message)
        body = json_body(
            {
                "channel": self.name,
                "message_id": message.idempotency_key,
                "kind": message.kind,
                "to": recipient,
                "text": message.text,
                "data": message.data,
                "marketing": message.marketing,
            }
        )
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"Bearer {key}",
            "Idempotency-Key": message.idempotency_key,
            "User-Agent": "loyalty-outbox/1",
        }
        try:
            response = http_post(url, body=body, headers=headers, timeout=settings.LOYALTY_MESSAGE_TIMEOUT_SECONDS)
        except (OSError, urllib.error.URLError) as exc:
            raise ChannelError(gettext("Gateway unreachable: %(error)s") % {"error": exc}) from exc
        if 200 <= response.status < 300:
            return _reference(response.body)
        permanent = response.status < 500 and response.status not in RETRYABLE_STATUSES
        raise ChannelError(
            gettext("Gateway answered HTTP %(status)s: %(body)s")
            % {"status": response.status, "body": recipient_redact(response.body, recipient)},
            permanent=permanent,
        )


def recipient_redact(text: str, recipient: str) -> str:
    """``text`` (a gateway's answer) with the recipient masked: answers often
    quote it, and they are kept on the outbox row and logged."""
    from members.models import mask_phone

    if not recipient:
        return text
    if recipient.startswith("+"):
        masked = mask_phone(recipient)
        forms = [recipient, recipient.removeprefix("+86")]  # E.164 first, then the national number
    else:
        masked = recipient[:3] + "***"
        forms = [recipient]
    for form in forms:
        if form:
            text = text.replace(form, masked)
    return text


def _reference(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("id", "")) if isinstance(data, dict) else ""
