"""The zh-Hans catalogue: complete, well-formed, compiled, and used by the API.

The .po file is read with a small parser below (no polib at test time), and the
compiled .mo with the standard library's ``gettext``.
"""

from __future__ import annotations

import gettext
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.template import Context, Template
from django.utils import translation
from rest_framework.test import APIClient

CATALOGUE_DIR = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"
PO_PATH = CATALOGUE_DIR / "django.po"
MO_PATH = CATALOGUE_DIR / "django.mo"
IDENTIFY = "/api/v1/terminal/identify"
CJK = re.compile(r"[\u4e00-\u9fff]")
PERCENT_PLACEHOLDER = re.compile(r"%(?:\([^)]+\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
BRACE_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


# -- a tiny .po parser --------------------------------------------------------


@dataclass
class Entry:
    msgctxt: str | None = None
    msgid: str = ""
    msgid_plural: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    line: int = 0


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unquote(text: str) -> str:
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"')):
        raise ValueError(f"not a quoted string: {text}")
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def parse_po(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    current = Entry()
    target: tuple[str, int | None] | None = None
    seen_keyword = False

    def finish() -> None:
        nonlocal current, target, seen_keyword
        if seen_keyword:
            entries.append(current)
        current, target, seen_keyword = Entry(), None, False

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            finish()
            continue
        if line.startswith("#~"):  # obsolete entry: not part of the catalogue
            continue
        if line.startswith("#,"):
            if seen_keyword:
                finish()
            current.flags |= {flag.strip() for flag in line[2:].split(",") if flag.strip()}
            continue
        if line.startswith("#"):
            if seen_keyword:
                finish()
            continue
        if line.startswith('"'):
            assert target is not None, f"line {number}: continuation without a keyword"
            name, index = target
            if name == "msgstr":
                current.msgstr[index] += _unquote(line)  # type: ignore[index]
            else:
                setattr(current, name, (getattr(current, name) or "") + _unquote(line))
            continue
        keyword, _space, rest = line.partition(" ")
        match = re.fullmatch(r"msgstr\[(\d+)\]", keyword)
        if keyword in ("msgctxt", "msgid") and seen_keyword and target and target[0] == "msgstr":
            finish()  # a new entry without a blank line in between
        if not seen_keyword:
            current.line = number
        seen_keyword = True
        if match:
            target = ("msgstr", int(match.group(1)))
            current.msgstr[target[1]] = _unquote(rest)  # type: ignore[index]
        elif keyword == "msgstr":
            target = ("msgstr", 0)
            current.msgstr[0] = _unquote(rest)
        elif keyword in ("msgctxt", "msgid", "msgid_plural"):
            target = (keyword, None)
            setattr(current, keyword, _unquote(rest))
        else:
            raise AssertionError(f"{path}:{number}: unexpected line {raw!r}")
    finish()
    return entries


@pytest.fixture(scope="module")
def po_entries() -> list[Entry]:
    return parse_po(PO_PATH)


@pytest.fixture(scope="module")
def messages(po_entries: list[Entry]) -> list[Entry]:
    return [entry for entry in po_entries if entry.msgid]


@pytest.fixture(autouse=True)
def _restore_language():
    # LocaleMiddleware activates the request's language in this thread: put
    # back whatever was active so that later tests are not affected.
    with translation.override(translation.get_language()):
        yield


# -- (1) the catalogue is complete, well-formed and compiled --------------------


def test_catalogue_files_exist_and_mo_is_a_real_catalogue():
    assert PO_PATH.is_file()
    assert MO_PATH.is_file(), "run: DEBUG=1 python manage.py compilemessages --ignore=.venv"
    with MO_PATH.open("rb") as handle:
        catalogue = gettext.GNUTranslations(handle)
    assert catalogue.info()["language"] == "zh_Hans"


def test_header_declares_chinese_with_one_plural_form(po_entries):
    header = next(entry for entry in po_entries if entry.msgid == "" and entry.msgctxt is None)
    fields = dict(line.split(": ", 1) for line in header.msgstr[0].splitlines() if ": " in line)
    assert fields["Language"] == "zh_Hans"
    assert fields["Content-Type"] == "text/plain; charset=UTF-8"
    assert fields["Plural-Forms"] == "nplurals=1; plural=0;"
    assert "fuzzy" not in header.flags


def test_every_message_has_a_translation_and_none_is_fuzzy(messages):
    assert len(messages) > 800
    untranslated = [entry.msgid for entry in messages if not all(entry.msgstr.values()) or not entry.msgstr]
    fuzzy = [entry.msgid for entry in messages if "fuzzy" in entry.flags]
    assert untranslated == []
    assert fuzzy == []


def test_plural_messages_have_exactly_one_form(messages):
    plurals = [entry for entry in messages if entry.msgid_plural is not None]
    assert plurals
    wrong = [entry.msgid for entry in plurals if sorted(entry.msgstr) != [0]]
    assert wrong == []


def test_translations_keep_placeholders_and_html(messages):
    problems = []
    for entry in messages:
        sources = [entry.msgid] + ([entry.msgid_plural] if entry.msgid_plural else [])
        for text in entry.msgstr.values():
            for source in sources:
                if "python-format" in entry.flags and sorted(PERCENT_PLACEHOLDER.findall(source)) != sorted(
                    PERCENT_PLACEHOLDER.findall(text)
                ):
                    problems.append((entry.line, entry.msgid, text))
                if "python-brace-format" in entry.flags and sorted(BRACE_PLACEHOLDER.findall(source)) != sorted(
                    BRACE_PLACEHOLDER.findall(text)
                ):
                    problems.append((entry.line, entry.msgid, text))
                if sorted(HTML_TAG.findall(source)) != sorted(HTML_TAG.findall(text)):
                    problems.append((entry.line, entry.msgid, text))
    assert problems == []


def test_translations_are_chinese(messages):
    # Every message that has words in it reads as Chinese (codes, formats and
    # placeholders alone may stay as they are).
    wordy = [entry for entry in messages if re.search(r"[A-Za-z]{3,}", PERCENT_PLACEHOLDER.sub("", entry.msgid))]
    not_chinese = [entry.msgid for entry in wordy if not all(CJK.search(text) for text in entry.msgstr.values())]
    assert not_chinese == []


def test_compiled_catalogue_matches_the_po_file(messages):
    # A stale .mo (the .po edited without compilemessages) fails here.
    with MO_PATH.open("rb") as handle:
        catalogue = gettext.GNUTranslations(handle)
    stale = []
    for entry in messages:
        key = entry.msgid if entry.msgctxt is None else f"{entry.msgctxt}\x04{entry.msgid}"
        compiled = catalogue._catalog.get(key if entry.msgid_plural is None else (key, 0))  # type: ignore[attr-defined]
        if compiled != entry.msgstr[0]:
            stale.append(entry.msgid)
    assert stale == []


# -- (2) Django uses the catalogue ----------------------------------------------


def test_error_messages_translate_to_chinese():
    from campaigns.errors import CouponAlreadyWrittenOff
    from points.errors import InsufficientPoints

    error = InsufficientPoints(available=1, requested=2)
    with translation.override("zh-hans"):
        chinese = error.render_message()
        already = CouponAlreadyWrittenOff(
            store="上海南京西路店", terminal="till-1", receipt_no="R1", at="2025-06-01 10:00"
        )
        already_message = already.render_message()
    with translation.override("en"):
        english = error.render_message()

    assert chinese == "积分不足：可用 1，需要 2。"
    assert "积分" in chinese
    assert english == "Not enough points: 1 available, 2 requested."
    assert "核销" in already_message
    assert "上海南京西路店" in already_message
    assert "R1" in already_message


def test_glossary_terms_and_plurals():
    with translation.override("zh-hans"):
        assert translation.gettext("Clerk console") == "店员工作台"
        assert translation.gettext("Write off coupon") == "核销优惠券"
        assert translation.gettext("Receipt number") == "小票号"
        assert translation.gettext("Frozen") == "已冻结"
        assert translation.gettext("Store manager") == "店长"
        for count in (1, 5):
            text = translation.ngettext("%(count)d coupon voided.", "%(count)d coupons voided.", count)
            assert text % {"count": count} == f"已作废 {count} 张优惠券。"


def test_templates_translate_to_chinese():
    template = Template('{% load i18n %}{% translate "Member centre" %}|{% translate "Sign in" %}')
    with translation.override("zh-hans"):
        assert template.render(Context()) == "会员中心|登录"
    with translation.override("en"):
        assert template.render(Context()) == "Member centre|Sign in"


# -- (3) the API answers in the language asked for ------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("zh-hans", "身份认证信息未提供。"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "身份认证信息未提供。"),
        ("en", "Authentication credentials were not provided."),
    ],
)
def test_api_without_credentials_answers_in_the_requested_language(language, expected):
    # when
    response = APIClient().post(IDENTIFY, {"code": "x"}, format="json", HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "not_authenticated", "message": expected, "detail": {}}}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("language", "expected", "content_language"),
    [
        ("zh-hans", "API 密钥无效或已吊销。", "zh-hans"),
        ("en", "Invalid or revoked API key.", "en"),
    ],
)
def test_api_with_a_bad_key_answers_in_the_requested_language(language, expected, content_language):
    # given
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key nope.not-a-key")
    # when
    response = client.post(IDENTIFY, {"code": "x"}, format="json", HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert response.status_code == 401
    assert response["Content-Language"] == content_language
    assert response.json()["error"] == {"code": "authentication_failed", "message": expected, "detail": {}}


@pytest.mark.parametrize(
    ("language", "expected"),
    [("zh-hans", "请求中包含无效的值。"), ("en", "The request contains invalid values.")],
)
def test_api_with_a_bad_body_answers_in_the_requested_language(terminal_client, language, expected):
    # when
    response = terminal_client.post(IDENTIFY, {}, format="json", HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"] == expected
    assert "code" in error["detail"]
