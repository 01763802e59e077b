"""The default channel: one log line per message, with the phone masked.

Development, tests and chains that have no gateway yet see exactly what a
member would receive, without personal data in the logs.
"""

from __future__ import annotations

import logging

from campaigns.channels import OutgoingMessage
from members.models import mask_phone

logger = logging.getLogger("campaigns.messages")


class LogChannel:
    name = "log"

    def send(self, message: OutgoingMessage) -> str:
        logger.info(
            "message %s %s to member %s (%s): %s",
            message.message_id,
            message.kind,
            message.member_no,
            mask_phone(message.phone) or "-",
            message.text,
        )
        return ""
