"""SMS through the chain's gateway (``LOYALTY_SMS_GATEWAY_URL`` / ``_KEY``),
to the member's mobile phone in E.164."""

from __future__ import annotations

from django.utils.translation import gettext

from campaigns.channels import HttpGatewayChannel, OutgoingMessage, RecipientUnavailable


class SmsChannel(HttpGatewayChannel):
    name = "sms"
    url_setting = "LOYALTY_SMS_GATEWAY_URL"
    key_setting = "LOYALTY_SMS_GATEWAY_KEY"

    def recipient(self, message: OutgoingMessage) -> str:
        if not message.phone:
            raise RecipientUnavailable(gettext("The member has no mobile phone."))
        return message.phone
