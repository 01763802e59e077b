"""Schemathesis over the whole OpenAPI schema (issue 8, "Bad input and fuzzing").

The schema is the one the app serves at ``/api/schema/``; requests go to the
real Django application in-process (WSGI), with the real PostgreSQL test
database, authenticated as the operation's security scheme says: terminal
operations with a terminal's ``Api-Key``, member operations with a member's
``Bearer`` token, operator operations with a staff session (an Operator, who
may adjust points and read reports). Schemathesis generates valid and invalid
requests (its examples, coverage and fuzzing phases); every response must

- not be a server error (``not_a_server_error``),
- have a status the schema declares for the operation (``status_code_conformance``),
- have the declared content type (``content_type_conformance``) and body
  schema (``response_schema_conformance``),
- and, for every 4xx/5xx, be the error envelope with a code of the catalogue
  (``error_envelope``, below).

The stateful test follows the OpenAPI links the schema declares
(``loyalty.api.schema.LINKS``): a member's code into identify, preview and
purchase; a purchase into its refund; the catalogue into an exchange and the
exchanged coupon into a write-off; an adjustment into its approval; a WeChat
login into registration.

Budget: ``FUZZ_EXAMPLES`` examples per operation (default 15) and
``FUZZ_SCENARIOS`` stateful scenarios (default 25), derandomized (the same
requests on every CI run, well under a minute). A long run by hand explores
new inputs each time::

    FUZZ_EXAMPLES=1000 FUZZ_SCENARIOS=500 TEST_DB_SUFFIX=_fuzz .venv/bin/pytest tests/test_fuzz_schema.py

``FUZZ_TRACE=<file>`` appends one line per request (operation, status, body).

Transport: schemathesis calls the app through Werkzeug's WSGI client; the app
is Django's test ``ClientHandler`` behind a small WSGI adapter, which (like
``django.test.Client``) keeps the test's database connection and transaction
across requests, so every example runs against the same rolled-back test
transaction, and which does not enforce CSRF for the operator's session (as
``APIClient`` does not).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.signals import got_request_exception
from django.db import transaction
from django.test import Client
from django.test.client import ClientHandler
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loyalty.roles import OPERATOR
from members.services import member_enrol, member_token_issue, store_get_or_create, terminal_create
from tests.api_errors import envelope_problem, error_codes
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.points.factories import buy, points_give

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
SCENARIOS = int(os.environ.get("FUZZ_SCENARIOS", "25"))
# Derandomized unless a budget is given by hand: CI sees the same requests every run.
DERANDOMIZE = "FUZZ_EXAMPLES" not in os.environ and "FUZZ_SCENARIOS" not in os.environ


class DjangoTestApp:
    """A WSGI application around Django's test ``ClientHandler``.

    ``ClientHandler`` does what ``django.test.Client`` does for each request:
    it leaves the database connection open (the test's transaction stays
    usable) and skips CSRF checks. Exceptions that become 500s are kept, to
    show their traceback in the failure.
    """

    def __init__(self) -> None:
        self.handler = ClientHandler(enforce_csrf_checks=False)
        self.tracebacks: list[str] = []
        got_request_exception.connect(self._on_exception, weak=False, dispatch_uid="fuzz-app-exceptions")

    def _on_exception(self, sender: Any, request: Any = None, **kwargs: Any) -> None:
        self.tracebacks.append("".join(traceback.format_exception(*sys.exc_info())))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        response = self.handler(environ)
        headers = [(name, value) for name, value in response.items()]
        headers += [("Set-Cookie", cookie.output(header="").strip()) for cookie in response.cookies.values()]
        start_response(f"{response.status_code} {response.reason_phrase}", headers)
        if response.streaming:
            return [b"".join(response.streaming_content)]
        return [response.content]


APP = DjangoTestApp()
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", APP)
# Credentials are the fixture's, per security scheme (headers_for); generated
# Authorization headers and session cookies would make most requests anonymous.
schema.config.generation.update(with_security_parameters=False)


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is ``{"error": {"code", "message", "detail"}}`` with a catalogued code."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    problem = envelope_problem(response.status_code, content_type, response.content)
    if problem is not None:
        raise AssertionError(problem)
    return None


def server_traceback(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 500's traceback, so that the failure says where it came from."""
    if response.status_code >= 500 and APP.tracebacks:
        raise AssertionError("server error:\n" + APP.tracebacks[-1])
    return None


CHECKS = [
    not_a_server_error,
    server_traceback,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]


@pytest.fixture
def credentials(db: Any) -> dict[str, dict[str, Any]]:
    """``case.call()`` arguments per security scheme, for a world with something
    to act on: a member with points, a purchase, a coupon, a benefit, and an
    operator."""
    store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    terminal, key = terminal_create(store=store, name="till-1")
    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    now = timezone.now()
    points_give(member, 50_000, at=now - timedelta(days=1))
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=now - timedelta(hours=1))
    benefit = BenefitFactory(points_price=100)
    coupon_give(benefit, member)
    _, token = member_token_issue(member=member)
    operator = get_user_model().objects.create_user(username="operator", is_staff=True)
    operator.groups.add(Group.objects.get(name=OPERATOR))
    session = Client()
    session.force_login(operator)
    return {
        "TerminalApiKey": {"headers": {"Authorization": f"Api-Key {key}"}},
        "MemberToken": {"headers": {"Authorization": f"Bearer {token}"}},
        # As a cookie, not a Cookie header: Werkzeug's client writes its own.
        "cookieAuth": {"cookies": {"sessionid": session.cookies["sessionid"].value}},
    }


def auth_for(operation: Any, credentials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The credentials of the operation's first security scheme (none for the login operations)."""
    for requirement in operation.definition.raw.get("security") or []:
        for name in requirement:
            return dict(credentials[name])
    return {}


def _clear_run_cache() -> None:
    """Delete this run's cache keys (throttle counters), as tests/conftest.py does between tests."""
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match=f"{cache.key_prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def _trace(kind: str, case: Any, response: Any) -> None:
    if os.environ.get("FUZZ_TRACE"):
        with open(os.environ["FUZZ_TRACE"], "a", encoding="utf-8") as trace:
            trace.write(
                f"{kind}\t{case.operation.label}\t{response.status_code}\t{case.body!r:.300}\t{response.content[:300]!r}\n"
            )


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_answers_within_its_schema_and_refuses_in_the_envelope(case, credentials):
    APP.tracebacks.clear()
    response = case.call_and_validate(**auth_for(case.operation, credentials), checks=CHECKS)
    _trace("stateless", case, response)


def test_every_code_the_envelope_check_accepts_is_in_docs_errors_md():
    # given the codes error_envelope accepts (LoyaltyError classes and DRF's, as the handler names them)
    documented = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    # then a client author finds each of them in the catalogue
    missing = sorted(code for code in error_codes() if f"`{code}`" not in documented)
    assert missing == []


def test_the_schema_declares_links_for_the_stateful_test():
    # given the links of loyalty.api.schema.LINKS in the served schema
    links = {
        (operation.definition.raw["operationId"], name)
        for operation in (result.ok() for result in schema.get_all_operations())
        for response in operation.definition.raw["responses"].values()
        for name in response.get("links", {})
    }
    # then the flows of the till and of the mini-program are there
    assert {
        ("me_code", "IdentifyByCode"),
        ("me_code", "PurchaseWithCode"),
        ("terminal_purchase_create", "RefundPurchase"),
        ("benefit_list", "ExchangeBenefit"),
        ("benefit_exchange", "WriteOffExchanged"),
        ("me", "AdjustMember"),
        ("operator_adjustment_create", "ApproveAdjustment"),
        ("auth_wechat", "RegisterWithSession"),
    } <= links


def test_stateful_sequences_follow_the_links_without_a_server_error(credentials):
    # given a state machine over the schema's links, authenticated per operation
    steps: Counter[tuple[str, int]] = Counter()

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        # Each scenario runs in a savepoint rolled back at its end, with this
        # run's throttle counters cleared: scenarios do not see each other's
        # rows, and Hypothesis can replay one to shrink a failure.
        def setup(self) -> None:
            self.savepoint = transaction.savepoint()

        def teardown(self) -> None:
            transaction.savepoint_rollback(self.savepoint)
            _clear_run_cache()

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return auth_for(case.operation, credentials)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            steps[(case.operation.definition.raw["operationId"], response.status_code)] += 1
            _trace("stateful", case, response)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    # when
    APP.tracebacks.clear()
    Machine.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=6,
            deadline=None,
            database=None,
            derandomize=DERANDOMIZE,
            suppress_health_check=list(HealthCheck),
        )
    )
    # then values carried by links were accepted: a member found by the code
    # or number another response gave, a benefit exchanged from the catalogue,
    # a coupon written off by the code an exchange or identify returned (none
    # of these can be guessed by a fuzzer)
    assert sum(steps.values()) >= SCENARIOS
    reached_by_links = (
        steps[("terminal_identify", 200)] + steps[("benefit_exchange", 201)] + steps[("terminal_coupon_write_off", 200)]
    )
    assert reached_by_links > 0, sorted(steps.items())
