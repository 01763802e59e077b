"""Admin pages that are not a ModelAdmin's own: the member CSV import.

Hooked into the Member admin at ``admin/members/member/import/`` (wrapped in
``admin_site.admin_view``); the view checks staff status and the
``members.add_member`` permission itself as well, so it is safe however it is
routed.
"""

from __future__ import annotations

from pathlib import PurePath

from django import forms
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from members.imports import COLUMNS, member_import_csv
from members.models import Member, Store

IMPORT_PERMISSION = "members.add_member"
PHONE_PERMISSION = "members.view_member_phone"


class MemberImportForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "UTF-8 or GBK (“CSV” or “CSV UTF-8” as saved by Excel), with a header row. "
            "For more than about 10,000 rows use the import_members command, which is not bound to a page's time limit."
        ),
    )
    store = forms.ModelChoiceField(
        label=_("Default store"),
        queryset=Store.objects.all(),
        required=False,
        help_text=_("Registration store of rows without a store code."),
    )
    dry_run = forms.BooleanField(
        label=_("Dry run"), required=False, help_text=_("Check every row and show the report, but write nothing.")
    )

    def clean_file(self) -> object:
        file = self.cleaned_data["file"]
        if PurePath(file.name).suffix.lower() not in (".csv", ".txt"):
            raise forms.ValidationError(
                _("Upload a .csv file; in Excel use “Save as” → “CSV UTF-8” or “CSV”."), code="invalid_extension"
            )
        return file


@staff_member_required
def member_import_view(request: HttpRequest) -> HttpResponse:
    """Upload a CSV of members and show what was imported, already existed or
    was rejected (the report is shown once; importing the same file again
    imports nothing twice)."""
    if not request.user.has_perm(IMPORT_PERMISSION):
        raise PermissionDenied
    report = None
    if request.method == "POST":
        form = MemberImportForm(request.POST, request.FILES)
        if form.is_valid():
            report = member_import_csv(
                file=form.cleaned_data["file"],
                default_store=form.cleaned_data["store"],
                by_user=request.user,  # type: ignore[arg-type]
                dry_run=form.cleaned_data["dry_run"],
            )
    else:
        form = MemberImportForm()
    context = {
        **admin.site.each_context(request),
        "title": _("Import members"),
        "opts": Member._meta,
        "form": form,
        "report": report,
        "columns": COLUMNS,
        # Phones are shown as the file gave them only to those who may see members' phones.
        "show_phones": request.user.has_perm(PHONE_PERMISSION),
    }
    return TemplateResponse(request, "admin/members/member_import.html", context)
