from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from members.models import Member, MemberEvent, Store, Terminal, TerminalAPIKey, TierChange

pytestmark = pytest.mark.django_db


def _run(*args, **options):
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue().rstrip("\n").splitlines()


def test_create_terminal_prints_a_working_key_alone_on_its_last_line(store, member):
    # when
    lines = _run("create_terminal", "--store", "SH001", "--name", "till-9")
    # then
    key = lines[-1]
    assert key == key.strip()
    assert " " not in key
    terminal = Terminal.objects.get(store=store, name="till-9")
    assert TerminalAPIKey.objects.get(terminal=terminal).is_valid(key)
    assert not any(line.startswith("Created store") for line in lines)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    response = client.post("/api/v1/terminal/identify", {"code": member.member_no}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["member_no"] == member.member_no


def test_create_terminal_creates_the_store_if_missing():
    # when
    lines = _run("create_terminal", "--store", "HZ009", "--name", "till-1", "--store-name", "杭州西湖店")
    # then
    store = Store.objects.get(code="HZ009")
    assert store.name == "杭州西湖店"
    assert store.is_active is True
    assert lines[0] == "Created store HZ009."
    terminal = Terminal.objects.get(store=store)
    assert terminal.name == "till-1"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {lines[-1]}")
    response = client.post("/api/v1/terminal/identify", {"code": "8999999999"}, format="json")
    assert response.status_code == 404  # authenticated; the member is unknown


def test_create_terminal_key_is_stored_hashed(store):
    # when
    key = _run("create_terminal", "--store", "SH001", "--name", "till-9")[-1]
    # then
    stored = TerminalAPIKey.objects.get(terminal__name="till-9")
    assert key.split(".")[1] not in stored.hashed_key
    assert key not in stored.id


def test_member_token_prints_a_working_token_on_its_last_line(member):
    # when
    lines = _run("member_token", member.member_no)
    # then
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {lines[-1]}")
    response = client.get("/api/v1/me")
    assert response.status_code == 200, response.content
    assert response.json()["member_no"] == member.member_no


def test_member_token_for_unknown_member_fails():
    # when / then
    with pytest.raises(CommandError):
        _run("member_token", "8999999999")


def test_seed_demo_seeds_once():
    # when
    first = _run("seed_demo", "--members", "50")
    counts = (
        Store.objects.count(),
        Terminal.objects.count(),
        Member.objects.count(),
        TierChange.objects.count(),
        MemberEvent.objects.count(),
    )
    # then
    assert counts[0] == 8
    assert counts[1] == 16
    assert counts[2] == 50
    assert Member.objects.filter(phone__isnull=True).count() == 0
    assert "Terminal API keys (shown once):" in first

    # when seeded again
    second = _run("seed_demo", "--members", "50")
    # then nothing changes
    assert second == ["Demo data already seeded; keeping it."]
    assert (
        Store.objects.count(),
        Terminal.objects.count(),
        Member.objects.count(),
        TierChange.objects.count(),
        MemberEvent.objects.count(),
    ) == counts


def test_seed_demo_members_can_be_identified(anon_client):
    # given
    lines = _run("seed_demo", "--members", "50")
    key = next(line.split(": ", 1)[1] for line in lines if line.strip().startswith("SH001/till-1:"))
    member = Member.objects.order_by("pk").first()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    # when
    response = client.post("/api/v1/terminal/identify", {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json()["member_no"] == member.member_no
