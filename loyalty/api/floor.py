"""The benchmark's floor: the cheapest authenticated API call there is.

``GET /api/v1/bench/floor`` goes through the same stack as the terminal API
(gunicorn, Django middleware, DRF, terminal ``Api-Key`` authentication: one
query) and then reads one ``Store`` row by primary key (one query, prepared,
as the till's lookups are). ``make
bench`` measures its requests per second and states every API throughput
target as a ratio to it, so the targets mean the same on any machine.

It needs a terminal API key like the terminal API and returns only the
terminal's own store code, so it exposes nothing a terminal cannot see.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from loyalty.api.authentication import TerminalApiKeyAuthentication
from loyalty.api.permissions import IsTerminal
from loyalty.sql import select_one
from members.models import Store


class FloorApi(APIView):
    authentication_classes = [TerminalApiKeyAuthentication]
    permission_classes = [IsTerminal]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        # Read as the till's own lookups read theirs (loyalty/sql.py): the floor
        # is the cheapest the stack gets, not the ORM's query building.
        store = select_one(Store, pk=request.user.store_id)
        return Response({"store": {"id": store.pk, "code": store.code} if store else None})


floor_view = FloorApi.as_view()
