"""The reporting replica (``loyalty.dbrouters``), with a real second database.

The ``reporting`` alias of the test settings is a second PostgreSQL database
on the same server. At the start of this module it is made a copy of the
default test database (``CREATE DATABASE … TEMPLATE``), as a streaming replica
is a copy of its primary: same schema, same rows, never migrated on its own.
The tests then make the two databases differ on purpose (rollups written into
one of them only, a store renamed in one only) and check which database each
path reads:

* the report API, dashboard and exports show the reporting database's
  figures and its "as of" (a lagging replica's figures come with the moment
  they are as of), and the primary's rollups do not show;
* who asks (session, user, groups, staff profile) is read from the primary,
  which holds the credentials the reporting database does not;
* the till (identify, purchase), the member API and logins never query the
  reporting database, and keep working while it is unreachable;
* the rollup build (the Celery task) and the monthly snapshot read and write
  the primary only; writes of objects read from the replica go to the
  primary; migrations are allowed on the primary only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import DatabaseError, OperationalError, connections, router
from django.db.models import Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone, translation
from rest_framework.test import APIClient

from loyalty.dbrouters import REPORTING, reporting_alias
from loyalty.roles import OPERATOR, STORE_MANAGER
from members.models import MemberToken, StaffProfile, Store, Terminal, TerminalAPIKey, Tier
from members.selectors import member_code_current
from points.models import PointsEntry, Purchase
from reports.models import DailyRollup, MonthlyKpiSnapshot, MonthlyRollup, RollupDay
from reports.services import kpi_snapshot_build, local_midnight
from reports.tasks import build_rollups_task
from tests.points.factories import buy, local

pytestmark = pytest.mark.django_db(databases=["default", REPORTING])

JUNE = date(2025, 6, 1)
API = "/api/v1/reports/monthly"
PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module", autouse=True)
def _replica_copy(django_db_setup: Any, django_db_blocker: Any) -> None:
    """The reporting test database as a copy of the default one, made once per
    run: its schema comes from the primary, as a replica's does (migrations
    are not allowed on it)."""
    with django_db_blocker.unblock():
        source = connections["default"].settings_dict["NAME"]
        target = connections[REPORTING].settings_dict["NAME"]
        assert source != target
        # A template database must have no other session: close this run's own
        # (and give a thread of an earlier test a moment to close its).
        connections.close_all()
        for attempt in range(10):
            try:
                with connections["default"]._nodb_cursor() as cursor:
                    cursor.execute(f'DROP DATABASE IF EXISTS "{target}"')
                    cursor.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
                break
            except DatabaseError:
                if attempt == 9:
                    raise
                time.sleep(1)


@pytest.fixture
def on_replica(settings: Any) -> str:
    """Reports read the reporting database, as with REPORTING_DATABASE_URL set."""
    settings.LOYALTY_REPORTING_DATABASE = REPORTING
    return REPORTING


@pytest.fixture(autouse=True)
def _restore_language() -> Iterator[None]:
    # LocaleMiddleware activates the request's language in this thread.
    with translation.override(translation.get_language()):
        yield


def _rollups(
    using: str,
    *,
    built_day: date,
    purchases: int,
    sales: str,
    members: int,
    store: Store | None = None,
) -> None:
    """Report rollups of June as ``rollups_build`` leaves them, written into the
    database ``using`` only: days built through ``built_day``, ``purchases`` for
    ``sales`` on June 10, ``members`` silver members at month end (chain-wide,
    and for ``store`` when given)."""
    now = timezone.now()
    silver = Tier.objects.using(using).get(code="silver")
    as_of = min(local_midnight(date(2025, 7, 1)), local_midnight(built_day + timedelta(days=1)))
    RollupDay.objects.using(using).create(day=built_day, built_at=now)
    # Daily figures are one row per (store, tier) cell, summed by the selectors.
    DailyRollup.objects.using(using).create(
        day=date(2025, 6, 10),
        store_id=store.pk if store else None,
        tier_id=silver.pk,
        purchases=purchases,
        sales_amount=Decimal(sales),
    )
    # Month figures are one row per scope: chain, tier, and the store's.
    cells = [(None, None), (None, silver.pk)]
    if store is not None:
        cells += [(store.pk, None), (store.pk, silver.pk)]
    scopes = {
        (False, False): MonthlyRollup.Scope.ALL,
        (False, True): MonthlyRollup.Scope.TIER,
        (True, False): MonthlyRollup.Scope.STORE,
        (True, True): MonthlyRollup.Scope.STORE_TIER,
    }
    for store_id, tier_id in cells:
        MonthlyRollup.objects.using(using).create(
            month=JUNE,
            scope=scopes[(store_id is not None, tier_id is not None)],
            store_id=store_id,
            tier_id=tier_id,
            members_at_month_end=members,
            as_of=as_of,
            built_at=now,
        )


@pytest.fixture
def two_versions(store: Store) -> None:
    """June as the primary has it (built through June 30: 3 purchases, ¥300)
    and as a replica lagging ten days behind has it (built through June 20:
    7 purchases, ¥700): different on purpose, to tell which one answered."""
    _rollups("default", built_day=date(2025, 6, 30), purchases=3, sales="300.00", members=4, store=store)
    _rollups(REPORTING, built_day=date(2025, 6, 20), purchases=7, sales="700.00", members=9, store=store)


def _staff(username: str, role: str, store: Store | None = None) -> Any:
    """A staff user on the primary only, like every credential."""
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _signed_in(user: Any, client_class: type[Client] = APIClient) -> Any:
    client = client_class()
    client.force_login(user)
    return client


def _no_credentials_on_replica() -> None:
    """The reporting database holds none of the credentials the tests use:
    anything that works did not read them from there."""
    assert get_user_model().objects.using(REPORTING).count() == 0
    assert TerminalAPIKey.objects.using(REPORTING).count() == 0
    assert Terminal.objects.using(REPORTING).count() == 0
    assert MemberToken.objects.using(REPORTING).count() == 0
    assert StaffProfile.objects.using(REPORTING).count() == 0


# -----------------------------------------------------------------------------
# Report read paths: the reporting database
# -----------------------------------------------------------------------------
def test_report_api_reads_figures_and_as_of_from_the_reporting_database(on_replica, two_versions, settings):
    # given
    client = _signed_in(_staff("op", OPERATOR))
    _no_credentials_on_replica()
    # when
    on_replica_body = client.get(API, {"month": "2025-06"}).json()
    settings.LOYALTY_REPORTING_DATABASE = "default"
    on_primary_body = client.get(API, {"month": "2025-06"}).json()
    # then: the replica's June, and the moment it is as of (its last built day)
    assert (on_replica_body["purchases"], on_replica_body["member_sales"]) == (7, "700.00")
    assert on_replica_body["members_at_month_end"] == 9
    assert on_replica_body["tier_distribution"] == {"silver": 9, "gold": 0, "platinum": 0}
    assert on_replica_body["as_of"] == "2025-06-21T00:00:00+08:00"
    # and without a replica, the primary's
    assert (on_primary_body["purchases"], on_primary_body["member_sales"]) == (3, "300.00")
    assert on_primary_body["members_at_month_end"] == 4
    assert on_primary_body["as_of"] == "2025-07-01T00:00:00+08:00"


def test_store_manager_scope_comes_from_the_primary_and_figures_from_the_replica(
    on_replica, two_versions, store, other_store
):
    # given a store manager whose staff profile exists on the primary only
    manager = _staff("manager", STORE_MANAGER, store)
    _no_credentials_on_replica()
    # when
    response = _signed_in(manager).get(API, {"month": "2025-06"})
    other = _signed_in(manager).get(API, {"month": "2025-06", "store": other_store.code})
    # then: limited to their store, with the replica's figures of it
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["store"], body["purchases"], body["members_at_month_end"]) == ("SH001", 7, 9)
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "permission_denied"


def test_dashboard_and_export_show_the_replica_figures_and_how_fresh_they_are(on_replica, two_versions):
    # given
    client = _signed_in(_staff("op", OPERATOR), Client)
    # when
    page = client.get("/reports/", {"month": "2025-06"})
    export = client.get("/reports/export/kpis.csv", {"month": "2025-06"})
    # then
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="kpi-purchases" data-value="7"' in html
    assert 'id="kpi-member_sales" data-value="700.00"' in html
    assert "Figures up to 2025-06-21 00:00" in html
    assert export.status_code == 200
    rows = {row[0]: row[2] for row in csv.reader(io.StringIO(export.content.decode("utf-8-sig")))}
    assert (rows["purchases"], rows["member_sales"], rows["members_at_month_end"]) == ("7", "700.00", "9")


def test_dashboard_without_a_replica_shows_the_primary_figures(two_versions):
    # given no replica configured (the test settings' default)
    assert reporting_alias() == "default"
    client = _signed_in(_staff("op", OPERATOR), Client)
    # when
    html = client.get("/reports/", {"month": "2025-06"}).content.decode()
    # then
    assert 'id="kpi-purchases" data-value="3"' in html
    assert "Figures up to 2025-07-01 00:00" in html


def test_report_queries_split_between_the_primary_for_who_and_the_replica_for_what(on_replica, two_versions, store):
    # given
    client = _signed_in(_staff("manager", STORE_MANAGER, store))
    # when
    with (
        CaptureQueriesContext(connections["default"]) as primary,
        CaptureQueriesContext(connections[REPORTING]) as replica,
    ):
        response = client.get(API, {"month": "2025-06"})
    # then
    assert response.status_code == 200, response.content
    primary_sql = [query["sql"] for query in primary.captured_queries]
    replica_sql = [query["sql"] for query in replica.captured_queries]
    assert any("django_session" in sql for sql in primary_sql)
    assert any("auth_user" in sql for sql in primary_sql)
    assert any("members_staffprofile" in sql for sql in primary_sql)
    assert not any("reports_" in sql for sql in primary_sql)
    assert any("reports_dailyrollup" in sql for sql in replica_sql)
    assert any("reports_rollupday" in sql for sql in replica_sql)
    for table in ("django_session", "auth_", "members_staffprofile", "members_terminal", "members_membertoken"):
        assert not any(table in sql for sql in replica_sql), table


# -----------------------------------------------------------------------------
# Till, member API and logins: never the reporting database
# -----------------------------------------------------------------------------
def test_till_member_api_and_logins_send_no_query_to_the_reporting_database(
    on_replica, terminal_client, member, member_client
):
    # given
    _staff("op", OPERATOR)
    _no_credentials_on_replica()
    code, _ = member_code_current(member=member)
    # when
    with CaptureQueriesContext(connections[REPORTING]) as replica:
        identify = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
        purchase = terminal_client.post(
            "/api/v1/terminal/purchases",
            {"member": code, "receipt_no": "R-1", "amount": "128.50", "points_to_use": 0},
            format="json",
        )
        me = member_client.get("/api/v1/me")
        browser = Client()
        login = browser.post("/admin/login/", {"username": "op", "password": PASSWORD, "next": "/admin/"})
        admin_index = browser.get("/admin/")
    # then
    assert identify.status_code == 200, identify.content
    assert purchase.status_code == 201, purchase.content
    assert me.status_code == 200, me.content
    assert me.json()["points"]["balance"] == 128
    assert (login.status_code, login["Location"]) == (302, "/admin/")
    assert admin_index.status_code == 200
    assert replica.captured_queries == []
    assert PointsEntry.objects.get(member=member).points == 128
    assert PointsEntry.objects.using(REPORTING).count() == 0


@pytest.fixture
def unreachable_replica(on_replica: str) -> Iterator[None]:
    """The reporting alias pointing at a port where no server listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    real = connections[REPORTING]
    broken = real.__class__({**real.settings_dict, "HOST": "127.0.0.1", "PORT": str(port)}, REPORTING)
    connections[REPORTING] = broken
    try:
        yield
    finally:
        connections[REPORTING] = real
        broken.close()


def test_till_member_api_and_logins_work_while_the_replica_is_unreachable(
    unreachable_replica, terminal_client, member, member_client, store
):
    # given
    _staff("op", OPERATOR)
    code, _ = member_code_current(member=member)
    # when
    identify = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
    purchase = terminal_client.post(
        "/api/v1/terminal/purchases",
        {"member": code, "receipt_no": "R-1", "amount": "50.00", "points_to_use": 0},
        format="json",
    )
    me = member_client.get("/api/v1/me")
    browser = Client()
    login = browser.post("/admin/login/", {"username": "op", "password": PASSWORD, "next": "/admin/"})
    # then
    assert identify.status_code == 200, identify.content
    assert purchase.status_code == 201, purchase.content
    assert Purchase.objects.get(store=store, receipt_no="R-1").points_earned == 50
    assert me.status_code == 200
    assert me.json()["points"]["balance"] == 50
    assert login.status_code == 302
    # and the report API, which does read the replica, answers a retryable 503
    # (the replica really is unreachable)
    report = browser.get(API, {"month": "2025-06"})
    assert report.status_code == 503
    assert report.json()["error"]["code"] == "service_unavailable"
    # and the dashboard too fails rather than show the primary's figures instead
    with pytest.raises(OperationalError):
        browser.get("/reports/", {"month": "2025-06"})


# -----------------------------------------------------------------------------
# Rollups and snapshots: the primary
# -----------------------------------------------------------------------------
def test_rollup_task_and_snapshot_read_and_write_the_primary_only(on_replica, member, store):
    # given a purchase on the primary, and a replica that claims June is built with other figures
    buy(store=store, terminal=None, member=member, receipt_no="R-1", amount="88.00", at=local(2025, 6, 10, 12))
    _rollups(REPORTING, built_day=date(2025, 6, 30), purchases=7, sales="700.00", members=9)
    replica_days = list(RollupDay.objects.using(REPORTING).values_list("day", flat=True))
    replica_cells = list(DailyRollup.objects.using(REPORTING).order_by("pk").values_list("pk", "purchases"))
    # when
    days = build_rollups_task.delay().get()
    snapshot = kpi_snapshot_build(month=JUNE)
    # then: June built on the primary (the replica's "built" days were not taken as built)
    assert days > 0
    assert RollupDay.objects.filter(day__gte=date(2025, 6, 10), day__lte=date(2025, 6, 30)).count() == 21
    june = DailyRollup.objects.filter(day__gte=JUNE, day__lt=date(2025, 7, 1))
    assert sorted(set(june.values_list("day", flat=True))) == [date(2025, 6, 10)]
    assert june.aggregate(purchases=Sum("purchases"), sales=Sum("sales_amount")) == {
        "purchases": 1,
        "sales": Decimal("88.00"),
    }
    stored = MonthlyKpiSnapshot.objects.get(month=JUNE)
    assert stored.pk == snapshot.pk
    assert (stored.data["kpis"]["purchases"], stored.data["kpis"]["member_sales"]) == (1, "88.00")
    # and the replica untouched
    assert list(RollupDay.objects.using(REPORTING).values_list("day", flat=True)) == replica_days
    assert list(DailyRollup.objects.using(REPORTING).order_by("pk").values_list("pk", "purchases")) == replica_cells
    assert MonthlyKpiSnapshot.objects.using(REPORTING).count() == 0


# -----------------------------------------------------------------------------
# The router
# -----------------------------------------------------------------------------
def _copy_to_replica(store: Store, **changes: Any) -> Store:
    """``store``'s row written into the reporting database too (with ``changes``)."""
    values = {field.attname: getattr(store, field.attname) for field in Store._meta.concrete_fields}
    Store(**{**values, **changes}).save(using=REPORTING, force_insert=True)
    return Store.objects.using(REPORTING).get(pk=store.pk)


def test_an_object_read_from_the_replica_is_saved_to_the_primary(on_replica, store):
    # given
    replica_store = _copy_to_replica(store, name="副本门店")
    # when
    replica_store.name = "改名门店"
    replica_store.save()
    # then
    assert replica_store._state.db == "default"
    assert Store.objects.get(pk=store.pk).name == "改名门店"
    assert Store.objects.using(REPORTING).get(pk=store.pk).name == "副本门店"


def test_relations_of_replica_rows_stay_on_the_replica_but_credentials_come_from_the_primary(
    on_replica, store, terminal, member
):
    # given a store on both databases; its terminal and member on the primary only
    replica_store = _copy_to_replica(store)
    # when
    replica_members = list(replica_store.registered_members.all())
    replica_terminals = list(replica_store.terminals.all())
    # then
    assert list(store.registered_members.all()) == [member]
    assert replica_members == []
    assert replica_terminals == [terminal]
    assert replica_terminals[0]._state.db == "default"


def test_migrations_are_allowed_on_the_primary_only(on_replica):
    # given
    tables = set(connections[REPORTING].introspection.table_names())
    assert "reports_dailyrollup" in tables
    # when: a migrate run against the reporting alias (reports back to zero)
    call_command("migrate", "reports", "zero", database=REPORTING, verbosity=0)
    # then it changed no table there
    assert set(connections[REPORTING].introspection.table_names()) == tables
    assert router.allow_migrate("default", "points", model_name="pointsentry") is True
    assert router.allow_migrate(REPORTING, "points", model_name="pointsentry") is False
    assert router.allow_migrate(REPORTING, "auth", model_name="user") is False
    assert router.db_for_write(Store) == "default"
    assert router.db_for_read(get_user_model()) == "default"


# -----------------------------------------------------------------------------
# Settings
# -----------------------------------------------------------------------------
def _settings_of(env: dict[str, str]) -> dict[str, Any]:
    """DATABASES and LOYALTY_REPORTING_DATABASE of loyalty/settings.py in a fresh interpreter with ``env``."""
    script = (
        "import json, django\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "from django.db import connections\n"
        "out = {'alias': settings.LOYALTY_REPORTING_DATABASE, 'databases': sorted(settings.DATABASES)}\n"
        "if 'reporting' in settings.DATABASES:\n"
        "    out['options'] = settings.DATABASES['reporting'].get('OPTIONS', {})\n"
        "    with connections['reporting'].cursor() as cursor:\n"
        "        cursor.execute('SHOW default_transaction_read_only')\n"
        "        out['read_only'] = cursor.fetchone()[0]\n"
        "        try:\n"
        "            cursor.execute('CREATE TEMPORARY TABLE replica_write_probe (i int)')\n"
        "            out['write'] = 'accepted'\n"
        "        except Exception as error:\n"
        "            out['write'] = getattr(error.__cause__, 'pgcode', None) or repr(error)\n"
        "print(json.dumps(out))\n"
    )
    base = {key: value for key, value in os.environ.items() if key not in ("REPORTING_DATABASE_URL", "SECRET_KEY")}
    base.update(DJANGO_SETTINGS_MODULE="loyalty.settings", DEBUG="1", **env)
    result = subprocess.run(  # noqa: S603 - this interpreter, a constant script
        [sys.executable, "-c", script],
        env=base,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_reporting_database_url_there_is_no_reporting_alias():
    # when
    found = _settings_of({})
    # then
    assert found == {"alias": "default", "databases": ["default"]}


def test_reporting_database_url_adds_a_read_only_reporting_alias():
    # given the server of the test databases, its maintenance database
    primary = connections["default"].settings_dict
    host = primary["HOST"]
    if host.startswith("/"):
        url = f"postgres://{primary['USER']}@/postgres?host={host}"
    else:
        url = f"postgres://{primary['USER']}@{host}:{primary['PORT'] or 5432}/postgres"
    # when
    found = _settings_of({"REPORTING_DATABASE_URL": url})
    # then
    assert found["alias"] == "reporting"
    assert found["databases"] == ["default", "reporting"]
    assert found["options"]["options"] == "-c default_transaction_read_only=on"
    assert found["read_only"] == "on"
    # 25006: read_only_sql_transaction
    assert found["write"] == "25006"
