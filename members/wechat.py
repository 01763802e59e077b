"""WeChat mini-program login: exchange a ``wx.login`` code for an openid.

Adapters are pluggable by ``LOYALTY_WECHAT_ADAPTER``:

- ``wechat``: calls ``{WECHAT_API_BASE}/sns/jscode2session`` with the configured
  app id and secret (the real one; tests point the base at a fake server);
- ``dev``: accepts ``dev-<openid>`` and nothing else (development and demos).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.parse
import urllib.request
from typing import Protocol

from django.conf import settings
from django.utils.translation import gettext as _

from members.errors import WechatLoginFailed

logger = logging.getLogger(__name__)


class WechatAdapter(Protocol):
    def code_to_openid(self, code: str) -> str: ...


class DevAdapter:
    prefix = "dev-"

    def code_to_openid(self, code: str) -> str:
        openid = code[len(self.prefix) :] if code.startswith(self.prefix) else ""
        if not openid or len(openid) > 64 or not openid.replace("-", "").replace("_", "").isalnum():
            raise WechatLoginFailed(reason=_("the development adapter accepts only dev-<openid>"))
        return openid


class Code2SessionAdapter:
    timeout_seconds = 5

    def code_to_openid(self, code: str) -> str:
        if not settings.WECHAT_APP_ID or not settings.WECHAT_APP_SECRET:
            raise WechatLoginFailed(reason=_("WeChat app id and secret are not configured"))
        query = urllib.parse.urlencode(
            {
                "appid": settings.WECHAT_APP_ID,
                "secret": settings.WECHAT_APP_SECRET,
                "js_code": code,
                "grant_type": "authorization_code",
            }
        )
        url = f"{settings.WECHAT_API_BASE.rstrip('/')}/sns/jscode2session?{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_seconds) as response:  # noqa: S310
                payload = json.loads(response.read().decode("utf-8"))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError covers URLError, timeouts and a connection reset or
            # closed while reading the answer (RemoteDisconnected).
            logger.warning("WeChat code2session failed: %s", exc)
            raise WechatLoginFailed(reason=_("WeChat could not be reached")) from exc
        if not isinstance(payload, dict):
            logger.warning("WeChat code2session answered a %s, not an object", type(payload).__name__)
            raise WechatLoginFailed(reason=_("WeChat returned no openid"))
        if payload.get("errcode"):
            logger.info("WeChat code2session refused: errcode=%s", payload.get("errcode"))
            raise WechatLoginFailed(
                reason=_("WeChat refused the login code"), detail={"errcode": payload.get("errcode")}
            )
        openid = payload.get("openid")
        if not openid:
            raise WechatLoginFailed(reason=_("WeChat returned no openid"))
        return str(openid)


ADAPTERS: dict[str, type] = {"dev": DevAdapter, "wechat": Code2SessionAdapter}


def get_adapter() -> WechatAdapter:
    return ADAPTERS[settings.LOYALTY_WECHAT_ADAPTER]()
