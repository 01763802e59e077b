"""The member web page at ``/m/``: it plays the WeChat mini-program's part.

The view renders a static shell only. Everything about the member comes from
the member API (``/api/v1/auth/...``, ``/api/v1/me...``, ``/api/v1/benefits``),
called by the page's own JavaScript with a Bearer token that it keeps in
``localStorage``: there is no server-side member session and no personal data
in the HTML, so the shell is the same for everyone in a language.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import get_language, get_language_info
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from campaigns.models import Benefit, Coupon
from points.models import PointsEntry


def _config() -> dict[str, Any]:
    """What the page's JavaScript needs to know; read per request, never at import."""
    language = get_language() or settings.LANGUAGE_CODE
    return {
        "api": {
            "wechat": reverse("auth-wechat"),
            "register": reverse("auth-register"),
            "logout": reverse("auth-logout"),
            "me": reverse("me"),
            "code": reverse("me-code"),
            "ledger": reverse("me-ledger"),
            "check_in": reverse("me-check-in"),
            "coupons": reverse("me-coupons"),
            "benefits": reverse("benefit-list"),
            # The exchange URL of benefit 0; the page swaps in the real id.
            "exchange": reverse("benefit-exchange", kwargs={"pk": 0}),
        },
        "language": language,
        # Intl locale for dates and numbers, matching the page's language.
        "locale": "zh-CN" if language.startswith("zh") else language,
        "languages": [
            {"code": code, "name": get_language_info(code)["name_local"]} for code, _name in settings.LANGUAGES
        ],
        "language_cookie": settings.LANGUAGE_COOKIE_NAME,
        "time_zone": settings.TIME_ZONE,
        # Typing a dev-<openid> login code only makes sense with the dev adapter;
        # with the real one the login code comes from wx.login in the mini-program.
        "dev_login": settings.LOYALTY_WECHAT_ADAPTER == "dev",
        # Labels of the API's stable codes, from the models' own translated choices.
        "labels": {
            "entry_kind": dict(PointsEntry.Kind.choices),
            "entry_source": dict(PointsEntry.Source.choices),
            "benefit_kind": dict(Benefit.Kind.choices),
            "coupon_source": dict(Coupon.Source.choices),
        },
    }


# never_cache: the shell varies by language (Accept-Language or the language
# cookie), and its URL may carry a ?token= that no cache should keep.
@never_cache
@require_safe
def member_page(request: HttpRequest) -> HttpResponse:
    """The member page shell (GET /m/)."""
    return render(request, "member/page.html", {"config": _config()})
