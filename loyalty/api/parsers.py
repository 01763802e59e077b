"""The API's JSON parser: DRF's, with a nesting limit.

Python's JSON decoder recurses once per level of nesting, so a body of a
hundred thousand ``[`` raises ``RecursionError``, which DRF does not catch
(a 500). No request of this API nests deeper than a few levels; anything
deeper than ``MAX_DEPTH`` is refused as ``malformed_request`` (400) before a
serializer or the database sees it.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 32


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(
                _("JSON parse error - nested more than %(max)s levels deep.") % {"max": MAX_DEPTH}
            ) from None
        if json_depth(data) > MAX_DEPTH:
            raise ParseError(_("JSON parse error - nested more than %(max)s levels deep.") % {"max": MAX_DEPTH})
        return data
