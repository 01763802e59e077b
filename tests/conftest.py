from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

if TYPE_CHECKING:
    from members.models import Member, Terminal


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    # Only this run's keys (KEY_PREFIX is per TEST_DB_SUFFIX): cache.clear()
    # is FLUSHDB, which would also wipe concurrent runs' throttle counters and
    # the Celery broker's queues that share the embedded Redis.
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match=f"{cache.key_prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def restore_migration_data() -> None:
    """Put back what data migrations create (default tiers, role groups):
    transactional tests end with a flush that empties every table."""
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    from loyalty.roles import roles_sync

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)
    roles_sync(Group, Permission)


@pytest.fixture(autouse=True)
def _migration_data(request: pytest.FixtureRequest) -> Any:
    """Every database test starts with the data migrations' rows (tiers, role
    groups), even after an earlier transactional test's flush emptied them
    (also in an earlier run with --reuse-db)."""
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in request.fixturenames
    if transactional:
        request.getfixturevalue("transactional_db")
    elif marker is not None or "db" in request.fixturenames:
        request.getfixturevalue("db")
    else:
        yield
        return
    from members.models import Tier

    if not Tier.objects.exists():
        restore_migration_data()
    yield


@pytest.fixture
def store(db: Any):
    from members.services import store_get_or_create

    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    return store


@pytest.fixture
def other_store(db: Any):
    from members.services import store_get_or_create

    store, _ = store_get_or_create(code="BJ001", name="北京三里屯店")
    return store


@pytest.fixture
def terminal_with_key(store: Any) -> tuple[Terminal, str]:
    from members.services import terminal_create

    return terminal_create(store=store, name="till-1")


@pytest.fixture
def terminal(terminal_with_key: tuple[Terminal, str]) -> Terminal:
    return terminal_with_key[0]


@pytest.fixture
def terminal_client(terminal_with_key: tuple[Terminal, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {terminal_with_key[1]}")
    return client


@pytest.fixture
def member(store: Any) -> Member:
    from members.services import member_enrol

    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    return member


@pytest.fixture
def member_client(member: Member) -> APIClient:
    from members.services import member_token_issue

    _, raw = member_token_issue(member=member)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()
