"""Security headers and CSRF on the pages people open in a browser: the clerk
console, the member page, the report dashboard and the admin.

* Content-Security-Policy (django-csp): scripts and <style> elements only from
  this origin or with the response's nonce, which every inline <script> and
  <style> of our pages carries; no inline event handler attributes; no framing.
* X-Frame-Options DENY, X-Content-Type-Options nosniff, Referrer-Policy.
* HSTS on requests that came over TLS, never over plain HTTP, and not in
  development settings (DEBUG=1).
* Every form that posts carries the CSRF token, and a post without it is 403.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from loyalty.roles import CLERK, OPERATOR
from members.models import Member, StaffProfile, Store

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "a-staff-password-1"


class _Page(HTMLParser):
    """The <script>, <style> and <form> elements of a page, and any on*= attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, Any]] = []
        self.styles: list[dict[str, Any]] = []
        self.forms: list[dict[str, Any]] = []
        self.handlers: list[tuple[str, str]] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.handlers += [(tag, name) for name in values if name.startswith("on")]
        if tag in ("script", "style"):
            self._open = {"attrs": values, "text": ""}
            (self.scripts if tag == "script" else self.styles).append(self._open)
        elif tag == "form":
            self.forms.append({"attrs": values, "csrf": False})
        elif tag == "input" and values.get("name") == "csrfmiddlewaretoken" and self.forms:
            self.forms[-1]["csrf"] = True

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._open = None


def _parsed(response: Any) -> _Page:
    page = _Page()
    page.feed(response.content.decode())
    return page


def _policy(response: Any) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


def _user(username: str, role: str, *, staff: bool, store: Store | None = None) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=staff)
    user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any | None = None, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def pages(store: Store) -> dict[str, tuple[Client, str]]:
    """(client, path) of each page, signed in as whoever may open it."""
    operator = _user("operator", OPERATOR, staff=True)
    clerk = _user("clerk", CLERK, staff=False, store=store)
    return {
        "console": (_client(clerk), "/console/"),
        "console login": (_client(), "/console/login/"),
        "member page": (_client(), "/m/"),
        "reports": (_client(operator), "/reports/?month=2025-03"),
        "admin login": (_client(), "/admin/login/"),
        "admin member list": (_client(operator), "/admin/members/member/"),
    }


PAGES = ["console", "console login", "member page", "reports", "admin login", "admin member list"]


# -----------------------------------------------------------------------------
# Headers
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", PAGES)
def test_pages_carry_the_security_headers(pages, name):
    client, path = pages[name]
    # when
    response = client.get(path)
    # then
    assert response.status_code == 200, name
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    policy = _policy(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]


@pytest.mark.parametrize("name", PAGES)
def test_every_inline_script_and_style_carries_the_nonce_of_the_response(pages, name):
    client, path = pages[name]
    # when
    response = client.get(path)
    page = _parsed(response)
    policy = _policy(response)
    # then no inline event handler (the policy would refuse it)
    assert page.handlers == []
    inline_scripts = [
        script
        for script in page.scripts
        if "src" not in script["attrs"] and script["attrs"].get("type", "") not in ("application/json",)
    ]
    nonces = {script["attrs"].get("nonce") for script in inline_scripts} | {
        style["attrs"].get("nonce") for style in page.styles
    }
    if not nonces:
        assert all(not source.startswith("'nonce-") for source in policy["script-src"])
        return
    # one nonce, the one the policy names, on every inline script and <style>
    assert len(nonces) == 1, nonces
    (nonce,) = nonces
    assert len(nonce or "") >= 16
    assert f"'nonce-{nonce}'" in policy["script-src"]
    if name != "reports":
        assert f"'nonce-{nonce}'" in policy["style-src"]
        assert "'unsafe-inline'" not in policy["style-src"]


def test_the_nonce_changes_with_every_response(pages):
    client, path = pages["console"]
    # when
    first = _policy(client.get(path))["script-src"]
    second = _policy(client.get(path))["script-src"]
    # then
    assert first != second
    assert [source for source in first if source.startswith("'nonce-")]


def test_the_report_page_alone_lets_plotly_add_its_own_style_elements(pages):
    client, path = pages["reports"]
    # when
    policy = _policy(client.get(path))
    # then styles may be inline there (plotly.js inserts <style> elements), scripts may not
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert [source for source in policy["script-src"] if source.startswith("'nonce-")]


def test_the_api_docs_page_allows_its_cdn_and_no_inline_script(anon_client):
    # when
    response = anon_client.get("/api/docs/")
    policy = _policy(response)
    page = _parsed(response)
    # then
    assert response.status_code == 200
    assert policy["script-src"] == ["'self'", "https://cdn.jsdelivr.net"]
    assert [script for script in page.scripts if "src" not in script["attrs"]] == []
    assert policy["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize("name", PAGES)
def test_hsts_is_sent_over_tls_only(pages, name):
    client, path = pages[name]
    # when
    secure = client.get(path, secure=True)
    plain = client.get(path)
    # then
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Strict-Transport-Security" not in plain


def test_a_tls_terminating_proxy_marks_the_request_secure(pages):
    client, path = pages["member page"]
    # when the proxy in front says the client used https
    response = client.get(path, headers={"X-Forwarded-Proto": "https"})
    # then
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.mark.parametrize(
    ("debug", "expected"),
    [("0", "31536000 True True True True"), ("1", "0 False False False False")],
)
def test_production_settings_turn_on_hsts_redirect_and_secure_cookies_and_development_does_not(debug, expected):
    # given the settings module as a fresh process reads it from the environment
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SECURE_", "SESSION_COOKIE", "CSRF_COOKIE", "DJANGO_SETTINGS"))
    }
    environment.update(DEBUG=debug, SECRET_KEY="s" * 60)
    code = (
        "import loyalty.settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT, "
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_INCLUDE_SUBDOMAINS)"
    )
    # when
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], cwd=BASE_DIR, env=environment, capture_output=True, text=True, check=True
    )
    # then
    assert done.stdout.strip() == expected


def test_the_deploy_check_is_clean_with_production_settings():
    # given production settings from the environment (as .ci/run gives them)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_SETTINGS")}
    environment.update(DEBUG="0", SECRET_KEY="p-" + "x1y2z3" * 10, ALLOWED_HOSTS="loyalty.example.com")
    # when
    done = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    # then
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_the_tests_run_with_the_production_hsts_value():
    # Guards the HSTS tests above: they would pass vacuously with 0.
    assert settings.SECURE_HSTS_SECONDS == 31536000


# -----------------------------------------------------------------------------
# CSRF
# -----------------------------------------------------------------------------
FORM_PATTERN = re.compile(r"<form\b(?P<attrs>[^>]*)>(?P<body>.*?)</form>", re.DOTALL | re.IGNORECASE)


def test_every_form_that_posts_in_our_templates_has_the_csrf_token():
    # given every template of the project
    missing = []
    posting = 0
    for path in sorted((BASE_DIR / "templates").rglob("*.html")):
        for form in FORM_PATTERN.finditer(path.read_text(encoding="utf-8")):
            if re.search(r"method\s*=\s*[\"']?post", form["attrs"], re.IGNORECASE):
                posting += 1
                if "{% csrf_token %}" not in form["body"]:
                    missing.append(f"{path.relative_to(BASE_DIR)}: <form{form['attrs']}>")
    # then
    assert posting >= 8  # the scan found the forms (a broken pattern would find none)
    assert missing == []


@pytest.mark.parametrize("name", PAGES)
def test_every_rendered_form_that_posts_carries_the_token(pages, name):
    client, path = pages[name]
    # when
    page = _parsed(client.get(path))
    # then
    posting = [form for form in page.forms if form["attrs"].get("method", "").lower() == "post"]
    assert all(form["csrf"] for form in posting), posting


def test_member_admin_change_forms_carry_the_token(store):
    # given an operator on a member's page and its freeze confirmation
    from members.services import member_enrol

    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    client = _client(_user("operator", OPERATOR, staff=True))
    # when
    pages = [
        client.get(f"/admin/members/member/{member.pk}/change/"),
        client.get(f"/admin/members/member/{member.pk}/freeze/"),
        client.get("/admin/points/pointsadjustment/add/"),
        client.get("/admin/campaigns/coupon/grant/"),
    ]
    # then
    for response in pages:
        assert response.status_code == 200
        posting = [form for form in _parsed(response).forms if form["attrs"].get("method", "").lower() == "post"]
        assert posting
        assert all(form["csrf"] for form in posting)


def _csrf_client(user: Any | None = None) -> Client:
    return _client(user, enforce_csrf_checks=True)


def test_console_sign_in_without_the_token_is_refused(store):
    # given a clerk with the right password
    _user("clerk", CLERK, staff=False, store=store)
    client = _csrf_client()
    # when
    response = client.post("/console/login/", {"username": "clerk", "password": PASSWORD})
    # then
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_console_sign_in_with_the_token_works(store):
    # given
    _user("clerk", CLERK, staff=False, store=store)
    client = _csrf_client()
    client.get("/console/login/")
    token = client.cookies["csrftoken"].value
    # when
    response = client.post(
        "/console/login/", {"username": "clerk", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    # then
    assert response.status_code == 302
    assert response["Location"] == "/console/"


@pytest.mark.parametrize(
    "path", ["/console/logout/", "/console/language/", "/reports/language/", "/admin/logout/"]
)
def test_signed_in_posts_without_the_token_are_refused(store, path):
    # given a signed-in clerk who is also staff (so that every path applies)
    user = _user("clerk", CLERK, staff=True, store=store)
    client = _csrf_client(user)
    # when
    response = client.post(path, {"language": "en", "next": "/console/"})
    # then
    assert response.status_code == 403
    assert "django_language" not in response.cookies
    assert client.get("/console/").status_code == 200  # still signed in


def test_admin_sign_in_and_actions_without_the_token_are_refused(store):
    # given
    from members.services import member_enrol

    member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
    operator = _user("operator", OPERATOR, staff=True)
    # when
    sign_in = _csrf_client().post("/admin/login/", {"username": "operator", "password": PASSWORD})
    freeze = _csrf_client(operator).post(
        f"/admin/members/member/{member.pk}/freeze/", {"post": "yes", "reason": "Fraud"}
    )
    # then
    assert sign_in.status_code == 403
    assert freeze.status_code == 403
    assert Member.objects.get(pk=member.pk).status == Member.Status.ACTIVE


def test_the_member_page_takes_no_form_post_and_its_api_needs_the_bearer_token(store):
    # given a member page client with a staff session cookie but no Bearer token
    from members.services import member_enrol

    member_enrol(phone="13812345678", name="王小明", store=store)
    client = _csrf_client(_user("operator", OPERATOR, staff=True))
    # when
    page_post = client.post("/m/", {"name": "x"})
    page_post_with_token = _client(_user("other", OPERATOR, staff=True)).post("/m/", {"name": "x"})
    profile = client.patch("/api/v1/me", data='{"name": "x"}', content_type="application/json")
    # then a post without the token is refused, and the page takes no post even with it;
    # a session cookie does not authenticate the member API: a forged cross-site
    # request has no Bearer token to send
    assert page_post.status_code == 403
    assert page_post_with_token.status_code == 405
    assert profile.status_code == 401
    assert not Member.objects.filter(name="x").exists()
