"""WeChat subscription messages through the chain's relay
(``LOYALTY_WECHAT_MESSAGE_GATEWAY_URL`` / ``_KEY``), to the member's
mini-program openid. The relay maps ``kind`` to its template id and ``data``
to the template's fields."""

from __future__ import annotations

from django.utils.translation import gettext

from campaigns.channels import HttpGatewayChannel, OutgoingMessage, RecipientUnavailable


class WechatChannel(HttpGatewayChannel):
    name = "wechat"
    url_setting = "LOYALTY_WECHAT_MESSAGE_GATEWAY_URL"
    key_setting = "LOYALTY_WECHAT_MESSAGE_GATEWAY_KEY"

    def recipient(self, message: OutgoingMessage) -> str:
        if not message.wechat_openid:
            raise RecipientUnavailable(gettext("The member has not bound WeChat."))
        return message.wechat_openid
