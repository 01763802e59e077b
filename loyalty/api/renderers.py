"""The API's JSON renderer: DRF's, safe for text UTF-8 cannot encode.

A JSON body may carry an unpaired surrogate (``"\\ud800"``); DRF's validation
messages echo some values back ("… is not a valid choice"), and DRF's
renderer, which writes UTF-8 text, then fails with ``UnicodeEncodeError``: a
500 instead of the 400. Such a response is rendered again with every
non-ASCII character escaped (``\\ud800``), which is valid JSON.
"""

from __future__ import annotations

from typing import Any

from rest_framework import renderers


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            escaped = renderers.JSONRenderer()
            escaped.ensure_ascii = True
            return escaped.render(data, accepted_media_type, renderer_context)
