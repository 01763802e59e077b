"""Request and response bodies of the API, validated and rendered by their
serializers without building a serializer per request.

``Serializer(...)`` deep-copies every declared field on each instantiation: the
identify response took 0.54 ms of CPU through ``Serializer(data).data`` on the
bench machine and 0.03 ms through ``to_representation`` on an instance kept per
class; the purchase body's validation was 15% of a purchase's CPU
(docs/performance.md). Validation and representation keep no state on the
serializer (``run_validation`` returns the data or raises; the project's
serializers read no ``context``), so one bound instance per class serves every
request and thread.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from rest_framework import serializers


@cache
def _instance(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    instance = serializer_class()
    instance.fields  # noqa: B018 - bind the fields once, before threads share the instance
    return instance


def represent(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """What ``serializer_class(data).data`` gives."""
    return _instance(serializer_class).to_representation(data)


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """What ``serializer_class(data=data)`` gives as ``validated_data`` after
    ``is_valid(raise_exception=True)``; raises the same ``ValidationError``."""
    return dict(_instance(serializer_class).run_validation(data))


_CENT = Decimal("0.01")


def decimal2(value: Any) -> str:
    """A value as ``DecimalField(decimal_places=2)`` renders it ("128.50"), for
    the responses built without their serializer (``points.apis.purchase_output``,
    ``members.apis.terminal_member_rendered``)."""
    if not isinstance(value, Decimal):  # e.g. a model default (0) not read back from the database
        value = Decimal(str(value).strip())
    return f"{value.quantize(_CENT):f}"
