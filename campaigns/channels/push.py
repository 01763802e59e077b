"""App push through the chain's push service (``LOYALTY_PUSH_GATEWAY_URL`` /
``_KEY``), addressed by member number (the service knows the devices)."""

from __future__ import annotations

from campaigns.channels import HttpGatewayChannel, OutgoingMessage


class PushChannel(HttpGatewayChannel):
    name = "push"
    url_setting = "LOYALTY_PUSH_GATEWAY_URL"
    key_setting = "LOYALTY_PUSH_GATEWAY_KEY"

    def recipient(self, message: OutgoingMessage) -> str:
        return message.member_no
