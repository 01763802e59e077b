"""The member page shell at /m/: static, translated, and free of personal data."""

import json
import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import translation

from members.services import member_token_issue

PAGE = "/m/"
TEMPLATES = Path(django_settings.BASE_DIR) / "templates" / "member"


def _json_island(html, element_id):
    match = re.search(rf'<script[^>]*id="{element_id}"[^>]*>(.*?)</script>', html, re.S)
    assert match, f"no #{element_id} in the page"
    return json.loads(match.group(1))


def _expected(language, text):
    """``text`` as the shell must show it in ``language`` (whatever the catalogue holds)."""
    with translation.override(language):
        return translation.gettext(text)


def _assert_shell_in(response, language):
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert response["Content-Language"] == language
    html = response.content.decode()
    assert f'<html lang="{language}">' in html
    assert f"<title>{_expected(language, 'Member centre')}</title>" in html
    assert _expected(language, "Daily check-in") in html
    config = _json_island(html, "m-config")
    assert config["language"] == language
    strings = _json_island(html, "m-strings")
    assert strings["exchange"] == _expected(language, "Exchange")
    with translation.override(language):
        assert config["labels"]["entry_kind"]["earn"] == translation.gettext("Earn")
    return html, config, strings


@pytest.fixture
def chinese_default(settings):
    # The project's default (tests/settings.py switches it to English).
    settings.LANGUAGE_CODE = "zh-hans"


def test_shell_is_chinese_by_default(client, chinese_default):
    # when
    response = client.get(PAGE)
    # then
    html, config, strings = _assert_shell_in(response, "zh-hans")
    assert "<title>会员中心</title>" in html
    assert "会员码" in html
    assert strings["exchange"] == "兑换"
    assert config["locale"] == "zh-CN"
    assert config["time_zone"] == "Asia/Shanghai"
    assert config["languages"] == [{"code": "zh-hans", "name": "简体中文"}, {"code": "en", "name": "English"}]
    assert config["language_cookie"] == django_settings.LANGUAGE_COOKIE_NAME


def test_shell_follows_a_chinese_browser(client, settings):
    # given: a site whose default is English
    settings.LANGUAGE_CODE = "en"
    # when
    response = client.get(PAGE, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    # then
    _assert_shell_in(response, "zh-hans")


def test_shell_is_english_with_accept_language_en(client, chinese_default):
    # when
    response = client.get(PAGE, headers={"Accept-Language": "en-US,en;q=0.9"})
    # then
    html, config, strings = _assert_shell_in(response, "en")
    assert "<title>Member centre</title>" in html
    assert "会员码" not in html
    assert strings["exchange"] == "Exchange"
    assert config["locale"] == "en"
    assert "Accept-Language" in response["Vary"]


def test_language_cookie_wins_over_accept_language(client, chinese_default):
    # given: what the page's language buttons set
    client.cookies[django_settings.LANGUAGE_COOKIE_NAME] = "en"
    # when
    response = client.get(PAGE, headers={"Accept-Language": "zh-CN"})
    # then
    _assert_shell_in(response, "en")


def test_unsupported_language_falls_back_to_the_default(client, chinese_default):
    # when
    response = client.get(PAGE, headers={"Accept-Language": "fr-FR"})
    # then
    _assert_shell_in(response, "zh-hans")


def test_shell_renders_no_personal_data_and_reads_nothing(client, member, django_assert_num_queries):
    # given: a member's token, in the query string and as a header
    _, raw = member_token_issue(member=member)
    # when: the view touches no member, token or session row
    with django_assert_num_queries(0):
        response = client.get(f"{PAGE}?token={raw}", headers={"Authorization": f"Bearer {raw}"})
    # then
    html = response.content.decode()
    assert response.status_code == 200
    for private in (member.name, member.phone, member.phone[-8:], member.member_no, raw, raw.split(".")[0]):
        assert private not in html
    assert not response.cookies  # no session, no CSRF cookie: the page works by Bearer token only


def test_shell_is_never_cached(client):
    # when: its URL may carry ?token= and it varies by language cookie
    response = client.get(PAGE)
    # then
    cache_control = {part.strip() for part in response["Cache-Control"].split(",")}
    assert {"no-store", "no-cache", "private"} <= cache_control


def test_shell_accepts_only_get_and_head(client):
    # when
    post = client.post(PAGE)
    head = client.head(PAGE)
    # then
    assert post.status_code == 405
    assert head.status_code == 200


def test_shell_points_the_script_at_the_member_api(client):
    # when
    config = _json_island(client.get(PAGE).content.decode(), "m-config")
    # then
    assert config["api"] == {
        "wechat": "/api/v1/auth/wechat",
        "register": "/api/v1/auth/register",
        "logout": "/api/v1/auth/logout",
        "me": "/api/v1/me",
        "code": "/api/v1/me/code",
        "ledger": "/api/v1/me/ledger",
        "check_in": "/api/v1/me/check-in",
        "coupons": "/api/v1/me/coupons",
        "benefits": "/api/v1/benefits",
        "exchange": "/api/v1/benefits/0/exchange",
    }


def test_dev_login_form_only_with_the_dev_adapter(client, settings):
    # given
    settings.LOYALTY_WECHAT_ADAPTER = "dev"
    # when
    dev = client.get(PAGE).content.decode()
    settings.LOYALTY_WECHAT_ADAPTER = "wechat"
    real = client.get(PAGE).content.decode()
    # then
    assert 'id="login-form"' in dev
    assert _json_island(dev, "m-config")["dev_login"] is True
    assert 'id="login-form"' not in real
    assert _json_island(real, "m-config")["dev_login"] is False


def test_every_string_the_script_uses_is_translated_by_the_shell(client):
    # given: the keys the script asks for with t("...")
    used = set(re.findall(r'\bt\("(\w+)"', (TEMPLATES / "_script.html").read_text()))
    # when
    strings = _json_island(client.get(PAGE).content.decode(), "m-strings")
    # then
    assert used
    assert used <= set(strings)
    assert all(isinstance(value, str) and value for value in strings.values())


def test_shell_escapes_translations_into_its_script(client, chinese_default):
    # given: a translation with characters that would end the JSON or the <script>
    hostile = 'a "quote" </script><b>&'

    def fake_gettext(message):
        return hostile if message == "Exchange" else message

    # when
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(translation._trans, "gettext", fake_gettext, raising=False)
        response = client.get(PAGE)
    # then
    html = response.content.decode()
    assert html.count("</script>") == html.count("<script")
    assert _json_island(html, "m-strings")["exchange"] == hostile
