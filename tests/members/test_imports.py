import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import path
from django.utils import timezone

from members.admin_views import member_import_view
from members.imports import _DecodedLines, member_import_csv
from members.management.commands.import_members import Command as ImportMembersCommand
from members.models import Member, MemberEvent, TierChange

pytestmark = pytest.mark.django_db

# The view as the Member admin hooks it; this module is the URLconf of the admin tests.
urlpatterns = [
    path("admin/members/member/import/", admin.site.admin_view(member_import_view), name="member-import"),
    path("admin/", admin.site.urls),
]
IMPORT_URL = "/admin/members/member/import/"

HEADER = "phone,name,gender,birthday,store,marketing_consent,member_no,registered_at"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def csv_file(*lines: str, encoding: str = "utf-8") -> io.BytesIO:
    return io.BytesIO("".join(line + "\r\n" for line in lines).encode(encoding))


def db_counts() -> tuple[int, int, int]:
    return Member.objects.count(), MemberEvent.objects.count(), TierChange.objects.count()


def rejected(report) -> list[tuple[int, str]]:
    return [(row.line, row.code) for row in report.rejected_rows]


# -----------------------------------------------------------------------------
# Happy path and idempotency
# -----------------------------------------------------------------------------
def test_import_enrols_each_row_with_its_details_and_audit_trail(store, other_store, django_user_model):
    # given
    operator = django_user_model.objects.create_user(username="op", password="pw", is_staff=True)
    file = csv_file(
        HEADER,
        "13800138000,王小明,男,1990-05-17,SH001,1,VIP000123,2019-03-01",
        "139 1234 5678,李娜,女,1985/11/2,BJ001,是,VIP000124,",
        "+8615012345678,,,,,,,",
    )
    # when
    report = member_import_csv(file=file, default_store=store, by_user=operator)
    # then
    assert (report.imported, report.existing, report.rejected) == (3, 0, 0)
    assert report.ok
    assert report.error is None
    assert [(row.line, row.legacy_member_no) for row in report.imported_rows] == [
        (2, "VIP000123"),
        (3, "VIP000124"),
        (4, ""),
    ]
    wang = Member.objects.get(phone="+8613800138000")
    assert wang.member_no == report.imported_rows[0].member_no
    assert (wang.name, wang.gender, wang.birthday.isoformat()) == ("王小明", "male", "1990-05-17")
    assert (wang.registration_store, wang.channel, wang.marketing_consent) == (store, "import", True)
    assert wang.created_at == datetime(2019, 3, 1, tzinfo=SHANGHAI)
    assert wang.tier.code == "silver"
    li = Member.objects.get(phone="+8613912345678")
    assert (li.name, li.gender, li.birthday.isoformat()) == ("李娜", "female", "1985-11-02")
    assert (li.registration_store, li.marketing_consent) == (other_store, True)
    assert timezone.now() - li.created_at < timedelta(minutes=1)
    bare = Member.objects.get(phone="+8615012345678")
    assert (bare.name, bare.gender, bare.birthday, bare.marketing_consent) == ("", "unknown", None, False)
    assert bare.registration_store == store  # the default store
    events = MemberEvent.objects.filter(member__in=[wang, li, bare])
    assert (
        sorted((e.kind, e.by_user_id, e.data["channel"]) for e in events) == [("enrolled", operator.pk, "import")] * 3
    )
    assert TierChange.objects.filter(member__in=[wang, li, bare], reason="enrolment").count() == 3


def test_reimporting_the_same_file_imports_nothing_twice(store):
    # given
    lines = (HEADER, "13800138000,王小明,男,1990-05-17,SH001,1,,2019-03-01", "13912345678,李娜,女,,SH001,0,,")
    first = member_import_csv(file=csv_file(*lines))
    counts = db_counts()
    # when
    second = member_import_csv(file=csv_file(*lines))
    # then
    assert (first.imported, first.existing, first.rejected) == (2, 0, 0)
    assert (second.imported, second.existing, second.rejected) == (0, 2, 0)
    assert db_counts() == counts
    assert [row.member_no for row in second.existing_rows] == [row.member_no for row in first.imported_rows]
    assert Member.objects.get(phone="+8613800138000").created_at == datetime(2019, 3, 1, tzinfo=SHANGHAI)


def test_existing_member_with_fewer_details_in_file_is_existing_and_unchanged(member, other_store):
    # given the member fixture: 13812345678, 王小明, store SH001, enrolled at the till
    before = Member.objects.values().get(pk=member.pk)
    counts = db_counts()
    # when files have the same phone with the same name and more details, or fewer
    fuller = member_import_csv(file=csv_file(HEADER, "138-1234-5678,王小明,男,1990-01-01,BJ001,1,OLD1,2015-01-01"))
    barer = member_import_csv(file=csv_file(HEADER, "+8613812345678,,,,,,,"))
    # then
    for report in (fuller, barer):
        assert (report.imported, report.existing, report.rejected) == (0, 1, 0)
        assert report.existing_rows[0].member_no == member.member_no
    assert Member.objects.values().get(pk=member.pk) == before
    assert db_counts() == counts


def test_existing_phone_with_another_name_is_rejected_and_member_unchanged(member):
    # given
    before = Member.objects.values().get(pk=member.pk)
    counts = db_counts()
    # when
    report = member_import_csv(file=csv_file(HEADER, "13812345678,李四,,,,,,"))
    # then
    assert rejected(report) == [(2, "phone_registered_to_other")]
    assert report.rejected_rows[0].problem.detail == {"member_no": member.member_no}
    assert (
        report.rejected_rows[0].message == "This phone number is already registered to a member with different details."
    )
    assert Member.objects.values().get(pk=member.pk) == before
    assert db_counts() == counts


# -----------------------------------------------------------------------------
# Rejections: each with its line and a stable code, nothing written, good rows go on
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad_row", "code", "message"),
    [
        ("12345,张三,,,,,,", "invalid_phone", "“12345” is not a valid mobile phone number."),
        ("1.39123E+10,张三,,,,,,", "invalid_phone", "“1.39123E+10” is not a valid mobile phone number."),
        ("010-62345678,张三,,,,,,", "invalid_phone", "“010-62345678” is not a valid mobile phone number."),
        (",张三,男,,,,,", "phone_required", "The phone is missing."),
        ("13912340003,张三,,,XX999,,,", "unknown_store", "No store with code “XX999”."),
        ("13912340003,张三,,1990.05.17,,,,", "invalid_birthday", None),
        ("13912340003,张三,,1990-02-30,,,,", "invalid_birthday", None),
        ("13912340003,张三,,2999-01-01,,,,", "invalid_birthday", None),
        ("13912340003,张三,x,,,,,", "invalid_gender", None),
        ("13912340003,张三,,,,maybe,,", "invalid_marketing_consent", None),
        ("13912340003,张三,,,,,,last year", "invalid_registered_at", None),
        ("13912340003,张三,,,,,,2999-12-31", "invalid_registered_at", None),
        ("13912340003," + "名" * 51 + ",,,,,,", "name_too_long", "The name is longer than 50 characters."),
        ("13912340003,张,三,,,,,,,extra", "too_many_columns", None),
    ],
)
def test_bad_row_is_rejected_with_line_and_code_and_good_rows_import(store, bad_row, code, message):
    # given
    counts = db_counts()
    file = csv_file(HEADER, "13912340001,甲,,,SH001,,,", bad_row, "13912340002,乙,,,SH001,,,")
    # when
    report = member_import_csv(file=file)
    # then
    assert rejected(report) == [(3, code)]
    assert [row.line for row in report.imported_rows] == [2, 4]
    assert report.rejected_rows[0].message  # translated text, rendered
    if message is not None:
        assert report.rejected_rows[0].message == message
    assert not Member.objects.filter(phone="+8613912340003").exists()
    assert db_counts() == (counts[0] + 2, counts[1] + 2, counts[2] + 2)


def test_duplicate_phone_in_file_rejects_the_later_row_naming_the_first(store):
    # given the same phone written two ways
    file = csv_file(HEADER, "13912340001,甲,,,SH001,,,", "13912340002,乙,,,SH001,,,", "+86 139-1234-0001,甲,,,SH001,,,")
    # when
    report = member_import_csv(file=file)
    # then
    assert rejected(report) == [(4, "duplicate_in_file")]
    assert report.rejected_rows[0].message == "This phone already appears on line 2 of the file."
    assert report.imported == 2
    assert Member.objects.filter(phone="+8613912340001").count() == 1


def test_unknown_store_is_rejected_and_store_codes_match_case_insensitively(store):
    # when
    report = member_import_csv(file=csv_file(HEADER, "13912340001,甲,,,sh001,,,", "13912340002,乙,,,NOPE,,,"))
    # then
    assert rejected(report) == [(3, "unknown_store")]
    assert Member.objects.get(phone="+8613912340001").registration_store == store
    assert not Member.objects.filter(phone="+8613912340002").exists()


def test_line_numbers_count_physical_lines_with_blank_and_multiline_rows(store):
    # given a blank line (skipped) and a quoted value over two lines in an ignored column
    file = csv_file(
        "phone,name,remark",
        "13912340001,甲,ok",
        "",
        '13912340002,乙,"two',
        'lines"',
        "bad,丙,x",
    )
    # when
    report = member_import_csv(file=file)
    # then
    assert [row.line for row in report.imported_rows] == [2, 4]
    assert rejected(report) == [(6, "invalid_phone")]
    assert report.ignored_columns == ["remark"]


def test_rows_are_applied_in_batches_with_rejections_and_duplicates_across_batches(store):
    # given batches of 2 rows
    file = csv_file(
        HEADER,
        "13912340001,甲,,,,,,",
        "bad,乙,,,,,,",
        "13912340003,丙,,,,,,",
        "13912340001,甲,,,,,,",
        "13912340005,戊,,,,,,",
    )
    seen_totals = []
    # when
    report = member_import_csv(
        file=file, default_store=store, batch_size=2, on_batch=lambda r: seen_totals.append(r.total)
    )
    # then
    assert seen_totals == [2, 4]
    assert (report.imported, report.existing, report.rejected) == (3, 0, 2)
    assert rejected(report) == [(3, "invalid_phone"), (5, "duplicate_in_file")]
    assert Member.objects.filter(channel="import").count() == 3


# -----------------------------------------------------------------------------
# Encodings and unreadable files
# -----------------------------------------------------------------------------
def test_gbk_file_as_chinese_excel_saves_it(store):
    # given
    file = csv_file(
        "手机号,姓名,性别,生日,门店", "13912340001,王小明,男,1990/5/17,SH001", "13912340002,李娜,女,,", encoding="gbk"
    )
    # when
    report = member_import_csv(file=file, default_store=store)
    # then
    assert (report.imported, report.rejected, report.encoding) == (2, 0, "GBK")
    assert Member.objects.get(phone="+8613912340001").name == "王小明"
    assert Member.objects.get(phone="+8613912340002").gender == "female"


def test_utf8_file_with_bom(store):
    # given
    file = csv_file(HEADER, "13912340001,王小明,男,,SH001,是,,", encoding="utf-8-sig")
    # when
    report = member_import_csv(file=file)
    # then
    assert (report.imported, report.rejected, report.encoding) == (1, 0, "UTF-8 (BOM)")
    assert report.columns[0] == "phone"
    assert Member.objects.get(phone="+8613912340001").name == "王小明"


def test_gbk_is_recognised_after_an_all_ascii_first_chunk():
    # given
    data = ("phone,name\r\n13912340001,Li\r\n13912340002,王小明\r\n").encode("gbk")
    # when
    lines = _DecodedLines(io.BytesIO(data), chunk_size=8)
    # then
    assert list(lines) == ["phone,name\r\n", "13912340001,Li\r\n", "13912340002,王小明\r\n"]
    assert lines.label == "GBK"


def test_bare_carriage_return_line_endings(store):
    # given a file as old Mac Excel writes it
    file = io.BytesIO(b"phone,name\r13912340001,Li\r13912340002,Wang\r")
    # when
    report = member_import_csv(file=file, default_store=store)
    # then
    assert report.imported == 2


def test_row_with_undecodable_bytes_is_rejected(store):
    # given a UTF-8 file with one row of stray bytes
    data = "phone,name\r\n13912340001,王小明\r\n".encode() + b"13912340002,\xff\xfe\r\n" + b"13912340003,Li\r\n"
    # when
    report = member_import_csv(file=io.BytesIO(data), default_store=store)
    # then
    assert rejected(report) == [(3, "invalid_encoding")]
    assert report.imported == 2
    assert not Member.objects.filter(phone="+8613912340002").exists()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"\r\n\r\n", "empty_file"),
        ("name,生日\r\n王小明,1990-01-01\r\n".encode(), "missing_column"),
        (b"phone,name,mobile\r\n13912340001,a,13912340002\r\n", "duplicate_column"),
        ("phone,name\r\n13912340001,王\r\n".encode("utf-16"), "unsupported_encoding"),
    ],
)
def test_unreadable_file_is_reported_and_writes_nothing(store, data, code):
    # given
    counts = db_counts()
    # when
    report = member_import_csv(file=io.BytesIO(data))
    # then
    assert report.error is not None
    assert report.error.code == code
    assert report.error.message
    assert not report.ok
    assert report.total == 0
    assert db_counts() == counts


def test_unclosed_quote_stops_the_file_after_importing_the_rows_before_it(store):
    # given
    file = csv_file("phone,name", "13912340001,甲", '13912340002,"乙', "13912340003,丙")
    # when
    report = member_import_csv(file=file, default_store=store)
    # then
    assert report.imported == 1
    assert (report.error.code, report.error_line) == ("unclosed_quote", 3)
    assert list(Member.objects.values_list("phone", flat=True)) == ["+8613912340001"]


def test_csv_the_reader_cannot_parse_stops_the_file_after_importing_the_rows_before_it(store):
    # given a value longer than the csv module accepts (128 KiB) on line 3
    file = csv_file("phone,name", "13912340001,甲", "13912340002," + "x" * 140_000, "13912340003,丙")
    # when
    report = member_import_csv(file=file, default_store=store)
    # then
    assert report.imported == 1
    assert (report.error.code, report.error_line) == ("unreadable_csv", 3)
    assert report.error.message.startswith("Line 3 is not valid CSV (")
    assert list(Member.objects.values_list("phone", flat=True)) == ["+8613912340001"]


# -----------------------------------------------------------------------------
# Dry run
# -----------------------------------------------------------------------------
def test_dry_run_reports_what_would_happen_and_writes_nothing(member):
    # given
    counts = db_counts()
    lines = (
        HEADER,
        "13912340001,甲,,,SH001,,,",
        "13812345678,王小明,,,,,,",
        "bad,乙,,,,,,",
        "13912340004,丁,,,SH001,,,",
    )
    # when
    report = member_import_csv(file=csv_file(*lines), dry_run=True)
    # then
    assert report.dry_run
    assert (report.imported, report.existing, report.rejected) == (2, 1, 1)
    assert [row.member_no for row in report.imported_rows] == ["", ""]
    assert db_counts() == counts
    # and a real run does what the dry run said
    real = member_import_csv(file=csv_file(*lines))
    assert (real.imported, real.existing, real.rejected) == (2, 1, 1)


# -----------------------------------------------------------------------------
# The command
# -----------------------------------------------------------------------------
def write_csv(tmp_path, *lines: str):
    target = tmp_path / "members.csv"
    target.write_bytes(csv_file(*lines).getvalue())
    return target


def test_command_imports_and_prints_the_summary(store, tmp_path):
    # given
    target = write_csv(tmp_path, HEADER, "13912340001,甲,,,,,,", "13912340002,乙,,,,,,")
    out = io.StringIO()
    # when
    call_command("import_members", str(target), "--store", "SH001", stdout=out)
    # then
    assert "Imported 2, existing 0, rejected 0 (2 rows, UTF-8" in out.getvalue()
    assert Member.objects.filter(registration_store=store, channel="import").count() == 2


def test_command_exits_non_zero_on_rejected_rows_but_imports_the_good_ones(store, tmp_path):
    # given
    target = write_csv(tmp_path, HEADER, "13912340001,甲,,,SH001,,,", "12345,乙,,,SH001,,,", "13912340003,丙,,,XX9,,,")
    rejected_csv = tmp_path / "rejected.csv"
    out = io.StringIO()
    # when
    with pytest.raises(CommandError) as raised:
        call_command("import_members", str(target), "--rejected-csv", str(rejected_csv), stdout=out)
    # then
    assert raised.value.returncode == 1
    assert str(raised.value) == "2 rows were rejected; see above."
    output = out.getvalue()
    assert "line 3: invalid_phone: “12345” is not a valid mobile phone number. (phone “12345”)" in output
    assert "line 4: unknown_store: No store with code “XX9”." in output
    assert "Imported 1, existing 0, rejected 2" in output
    assert list(Member.objects.values_list("phone", flat=True)) == ["+8613912340001"]
    written = rejected_csv.read_text(encoding="utf-8-sig").splitlines()
    assert written[0] == "line,code,message,phone,name,gender,birthday,store,marketing_consent,member_no,registered_at"
    assert written[1].startswith("3,invalid_phone,")
    assert len(written) == 3


def test_command_process_exit_status_is_1_when_rows_are_rejected(store, tmp_path, monkeypatch):
    # given (run_from_argv closes the connections when done; keep the test's open)
    target = write_csv(tmp_path, HEADER, "13912340001,甲,,,SH001,,,", "12345,乙,,,SH001,,,")
    monkeypatch.setattr("django.db.connections.close_all", lambda: None)
    command = ImportMembersCommand(stdout=io.StringIO(), stderr=io.StringIO())
    # when
    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "import_members", str(target), "--skip-checks"])
    # then
    assert exited.value.code == 1
    assert Member.objects.filter(phone="+8613912340001").exists()


def test_command_dry_run_writes_nothing(store, tmp_path):
    # given
    target = write_csv(tmp_path, HEADER, "13912340001,甲,,,SH001,,,")
    counts = db_counts()
    out = io.StringIO()
    # when
    call_command("import_members", str(target), "--dry-run", stdout=out)
    # then
    assert "Dry run, nothing was written. Imported 1, existing 0, rejected 0" in out.getvalue()
    assert db_counts() == counts


def test_command_refuses_an_unknown_default_store(store, tmp_path):
    target = write_csv(tmp_path, HEADER, "13912340001,甲,,,,,,")
    with pytest.raises(CommandError, match="No store with code “NOPE”"):
        call_command("import_members", str(target), "--store", "NOPE")
    assert not Member.objects.exists()


# -----------------------------------------------------------------------------
# The admin upload
# -----------------------------------------------------------------------------
def upload(*lines: str) -> SimpleUploadedFile:
    return SimpleUploadedFile("members.csv", csv_file(*lines).getvalue(), content_type="text/csv")


@pytest.fixture
def importer_client(client, django_user_model):
    user = django_user_model.objects.create_user(username="importer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="members", codename="add_member"))
    client.force_login(user)
    client.user = user
    return client


@pytest.mark.urls(__name__)
def test_admin_import_form_is_shown_to_a_user_with_permission(importer_client):
    response = importer_client.get(IMPORT_URL)
    assert response.status_code == 200
    assert b'enctype="multipart/form-data"' in response.content
    assert b"Import members" in response.content


@pytest.mark.urls(__name__)
def test_admin_upload_imports_and_shows_the_report(importer_client, store):
    # given
    file = upload(HEADER, "13912340001,王小明,男,,,,VIP1,", "12345,乙,,,,,,", "13912340003,丙,,,NOPE,,,")
    # when
    response = importer_client.post(IMPORT_URL, {"file": file, "store": store.pk})
    # then
    assert response.status_code == 200
    report = response.context["report"]
    assert (report.imported, report.existing, report.rejected) == (1, 0, 2)
    member = Member.objects.get(phone="+8613912340001")
    assert member.registration_store == store
    assert member.events.get().by_user == importer_client.user
    content = response.content.decode()
    assert "Imported 1, existing 0, rejected 2 of 3 rows." in content
    assert "invalid_phone" in content
    assert "No store with code “NOPE”." in content
    assert member.member_no in content
    # without members.view_member_phone, phones are masked
    assert "139****0001" in content
    assert "13912340001" not in content


@pytest.mark.urls(__name__)
def test_admin_report_shows_full_phones_to_users_who_may_see_them(importer_client, store):
    # given
    importer_client.user.user_permissions.add(
        Permission.objects.get(content_type__app_label="members", codename="view_member_phone")
    )
    # when
    response = importer_client.post(IMPORT_URL, {"file": upload(HEADER, "13912340001,甲,,,SH001,,,")})
    # then
    assert response.status_code == 200
    assert "13912340001" in response.content.decode()


@pytest.mark.urls(__name__)
def test_admin_upload_dry_run_writes_nothing(importer_client, store):
    counts = db_counts()
    response = importer_client.post(IMPORT_URL, {"file": upload(HEADER, "13912340001,甲,,,SH001,,,"), "dry_run": "on"})
    assert response.status_code == 200
    assert response.context["report"].imported == 1
    assert "Dry run: nothing was written" in response.content.decode()
    assert db_counts() == counts


@pytest.mark.urls(__name__)
def test_admin_upload_refuses_a_file_that_is_not_csv(importer_client, store):
    file = SimpleUploadedFile("members.xlsx", b"PK\x03\x04", content_type="application/vnd.ms-excel")
    response = importer_client.post(IMPORT_URL, {"file": file})
    assert response.status_code == 200
    assert response.context["report"] is None
    assert response.context["form"].errors["file"]
    assert not Member.objects.exists()


@pytest.mark.urls(__name__)
def test_admin_upload_is_refused_to_staff_without_the_add_member_permission(client, django_user_model, store):
    # given
    user = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="members", codename="view_member"))
    client.force_login(user)
    counts = db_counts()
    # when
    response = client.post(IMPORT_URL, {"file": upload(HEADER, "13912340001,甲,,,SH001,,,")})
    # then
    assert response.status_code == 403
    assert db_counts() == counts


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("staff", [False, None])
def test_admin_upload_sends_non_staff_and_anonymous_to_the_login(client, django_user_model, store, staff):
    # given a non-staff user with the permission, or nobody logged in
    if staff is not None:
        user = django_user_model.objects.create_user(username="shopper", password="pw", is_staff=staff)
        user.user_permissions.add(Permission.objects.get(content_type__app_label="members", codename="add_member"))
        client.force_login(user)
    counts = db_counts()
    # when
    response = client.post(IMPORT_URL, {"file": upload(HEADER, "13912340001,甲,,,SH001,,,")})
    # then
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert db_counts() == counts


def test_the_view_refuses_without_the_admin_wrapper_too(rf, django_user_model):
    # given the bare view, however it ends up routed
    user = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    request = rf.get(IMPORT_URL)
    request.user = user
    # then
    with pytest.raises(PermissionDenied):
        member_import_view(request)
