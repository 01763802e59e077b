"""Admin of segments and member tags (imported at the end of ``campaigns.admin``).

* A segment is edited as criteria (tiers, lifecycle stages, RFM groups,
  registration stores, tags, birthday month, registration dates, marketing
  consent). Its page shows, before use, its size and a random sample of 20
  members for the saved criteria (``campaigns.services.segments``); phones
  are masked (``Member.masked_phone``) unless the user holds
  ``members.view_member_phone``, and the sample is listed only to users who
  may view members (a store manager only sees members of their store).
* Member tags are catalogue data edited here; a tag used by a segment cannot
  be deleted (the segment would silently lose the criterion and widen to
  every member). Tags are put on members by operators
  (``member_tags_set``) and by CSV import: the "Import tags from CSV" page
  (``admin/members/membertag/import/``, needs ``members.change_membertag``;
  new tags are created only for users who may add tags) or
  ``manage.py import_member_tags``.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dates import MONTHS
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from campaigns.models import Segment
from campaigns.services.segments import (
    MAX_TAG_IMPORT_BYTES,
    member_tags_import_csv,
    segment_members,
    segment_sample,
    segment_size,
    segments_last_run,
    tag_name_normalise,
)
from loyalty.errors import LoyaltyError
from members.admin import LoyaltyModelAdmin, can_view_phone, store_scope
from members.models import Member, MemberTag

# Members listed in a segment's sample.
SEGMENT_SAMPLE_SIZE = 20
# Rejected import rows listed on the report page (all are counted).
TAG_IMPORT_ROWS_SHOWN = 1000


def _admin_url(model: type[Any], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


# -----------------------------------------------------------------------------
# Segments
# -----------------------------------------------------------------------------
class SegmentForm(forms.ModelForm):
    lifecycle_stages = forms.MultipleChoiceField(
        label=_("lifecycle stages"),
        choices=Member.Lifecycle.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Empty: every stage."),
    )
    rfm_groups = forms.MultipleChoiceField(
        label=_("RFM groups"),
        choices=Member.RfmGroup.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Empty: every member, with or without an RFM group (no purchase in the last 12 months)."),
    )
    birthday_month = forms.TypedChoiceField(
        label=_("birthday month"),
        choices=[("", _("Any")), (0, _("The month when the segment is used")), *MONTHS.items()],
        coerce=int,
        empty_value=None,
        required=False,
    )

    class Meta:
        model = Segment
        fields = [
            "name",
            "tiers",
            "lifecycle_stages",
            "rfm_groups",
            "stores",
            "tags",
            "birthday_month",
            "registered_from",
            "registered_until",
            "marketing_consent_only",
        ]
        help_texts = {
            "tiers": _("Empty: every tier."),
            "stores": _("Members registered at any of these stores. Empty: every store."),
            "tags": _("Members with any of these tags. Empty: no tag needed."),
            "registered_from": _("Local date, included."),
            "registered_until": _("Local date, included."),
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        start, end = cleaned.get("registered_from"), cleaned.get("registered_until")
        if start and end and start > end:
            self.add_error(
                "registered_until",
                forms.ValidationError(_("The end must not be before the start."), code="end_before_start"),
            )
        return cleaned


@admin.register(Segment)
class SegmentAdmin(LoyaltyModelAdmin):
    form = SegmentForm
    list_display = ["name", "criteria", "marketing_consent_only", "updated_at"]
    list_filter = ["marketing_consent_only"]
    search_fields = ["name"]
    filter_horizontal = ["tiers"]
    autocomplete_fields = ["stores", "tags"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name"]}),
        (
            _("Criteria (all must hold)"),
            {
                "fields": [
                    "tiers",
                    "lifecycle_stages",
                    "rfm_groups",
                    "stores",
                    "tags",
                    "birthday_month",
                    "registered_from",
                    "registered_until",
                    "marketing_consent_only",
                ]
            },
        ),
        (_("History"), {"fields": ["created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Segment]:
        return super().get_queryset(request).prefetch_related("tiers", "stores", "tags")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fieldsets if obj is not None else self.fieldsets[:-1]

    @admin.display(description=_("criteria"))
    def criteria(self, obj: Segment) -> str:
        parts = []
        tiers = ", ".join(str(tier) for tier in obj.tiers.all())
        if tiers:
            parts.append(gettext("tiers: %(values)s") % {"values": tiers})
        if obj.lifecycle_stages:
            labels = dict(Member.Lifecycle.choices)
            values = ", ".join(str(labels.get(value, value)) for value in obj.lifecycle_stages)
            parts.append(gettext("stages: %(values)s") % {"values": values})
        if obj.rfm_groups:
            labels = dict(Member.RfmGroup.choices)
            values = ", ".join(str(labels.get(value, value)) for value in obj.rfm_groups)
            parts.append(gettext("RFM: %(values)s") % {"values": values})
        stores = ", ".join(store.code for store in obj.stores.all())
        if stores:
            parts.append(gettext("stores: %(values)s") % {"values": stores})
        tags = ", ".join(tag.name for tag in obj.tags.all())
        if tags:
            parts.append(gettext("tags: %(values)s") % {"values": tags})
        if obj.birthday_month is not None:
            month = MONTHS.get(obj.birthday_month) or gettext("the month of use")
            parts.append(gettext("birthday in %(month)s") % {"month": month})
        if obj.registered_from or obj.registered_until:
            parts.append(
                gettext("registered %(start)s – %(end)s")
                % {"start": obj.registered_from or "…", "end": obj.registered_until or "…"}
            )
        return "; ".join(parts) or gettext("every active member")

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk is not None:
            context["segment_preview"] = self._preview(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _preview(self, request: HttpRequest, segment: Segment) -> dict[str, Any]:
        """Size and sample of the saved criteria, as of now."""
        now = timezone.now()
        preview: dict[str, Any] = {
            "size": segment_size(segment, at=now),
            "last_run": segments_last_run(),
            "can_view_members": request.user.has_perm("members.view_member"),
            "rows": [],
        }
        if not preview["can_view_members"]:
            return preview
        scope = store_scope(request)
        if scope is None:
            sample = segment_sample(segment, n=SEGMENT_SAMPLE_SIZE, at=now)
        else:
            # A store-bound user sees only members registered at their store.
            members = segment_members(segment, at=now).filter(registration_store_id=scope.store_id)
            sample = list(members.select_related("tier", "registration_store").order_by("?")[:SEGMENT_SAMPLE_SIZE])
            preview["scoped"] = True
        full_phone = can_view_phone(request)
        preview["rows"] = [
            {
                "url": _admin_url(Member, "change", member.pk),
                "member_no": member.member_no,
                "phone": member.phone if full_phone else member.masked_phone,
                "name": member.name,
                "tier": member.tier,
                "lifecycle_stage": member.get_lifecycle_stage_display(),
                "rfm_group": member.get_rfm_group_display(),
                "store": member.registration_store.code if member.registration_store else "",
                "registered": timezone.localdate(member.created_at),
            }
            for member in sample
        ]
        return preview


# -----------------------------------------------------------------------------
# Member tags
# -----------------------------------------------------------------------------
class MemberTagForm(forms.ModelForm):
    class Meta:
        model = MemberTag
        fields = ["name"]

    def clean_name(self) -> str:
        name = tag_name_normalise(self.cleaned_data["name"])
        if not name:
            raise forms.ValidationError(_("A name is required."), code="required")
        return name


class TagImportForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "Two columns, member number and tag (member_no,tag), with or without a header row; UTF-8 or GBK. "
            "Importing the same file again adds nothing."
        ),
    )

    def clean_file(self) -> Any:
        file = self.cleaned_data["file"]
        if PurePath(file.name).suffix.lower() not in (".csv", ".txt"):
            raise forms.ValidationError(
                _("Upload a .csv file; in Excel use “Save as” → “CSV UTF-8” or “CSV”."), code="invalid_extension"
            )
        if file.size > MAX_TAG_IMPORT_BYTES:
            raise forms.ValidationError(
                _("The file is larger than %(size)s MB; split it, or use “manage.py import_member_tags”."),
                code="file_too_large",
                params={"size": MAX_TAG_IMPORT_BYTES // (1024 * 1024)},
            )
        return file


@admin.register(MemberTag)
class MemberTagAdmin(LoyaltyModelAdmin):
    form = MemberTagForm
    list_display = ["name", "member_count"]
    search_fields = ["name"]
    ordering = ["name"]
    change_list_template = "admin/campaigns/segment/membertag_change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[MemberTag]:
        # A correlated count: computed only for the rows of the page shown.
        counts = (
            Member.tags.through.objects.filter(membertag_id=OuterRef("pk"))
            .order_by()
            .values("membertag_id")
            .annotate(n=Count("*"))
            .values("n")
        )
        return super().get_queryset(request).annotate(member_count=Coalesce(Subquery(counts), Value(0)))

    @admin.display(description=_("members"), ordering="member_count")
    def member_count(self, obj: MemberTag) -> int:
        return obj.member_count  # type: ignore[attr-defined]

    def has_import_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("members.change_membertag")

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A segment that lost its only tag would match every member: refuse instead.
        used = Segment.objects.filter(tags__in=list(objs)).distinct().order_by("name")
        protected = [*protected, *(gettext("Segment: %(name)s") % {"name": segment.name} for segment in used)]
        return deleted, model_count, perms_needed, protected

    def get_urls(self) -> list[URLPattern]:
        own = [path("import/", self.admin_site.admin_view(self.import_view), name="members_membertag_import")]
        return own + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_import": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context)

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_import_permission(request):
            raise PermissionDenied
        report = None
        form = TagImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                report = member_tags_import_csv(
                    file=form.cleaned_data["file"],
                    by_user=request.user,
                    create_tags=self.has_add_permission(request),
                )
            except LoyaltyError as error:
                form.add_error(None, forms.ValidationError(error.render_message(), code=error.code))
            else:
                if report.tagged:
                    self.message_user(
                        request,
                        ngettext("%(count)d tag added to members.", "%(count)d tags added to members.", report.tagged)
                        % {"count": report.tagged},
                    )
        rejected = report.rejected_rows if report else []
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Import member tags from CSV"),
            "intro": gettext(
                "Each row puts a tag on a member. Tags the member already has are left as they are, so a file can "
                "be imported again safely; rows that cannot be applied are listed with their line."
            ),
            "form": form,
            "submit_label": gettext("Import"),
            "media": self.media + form.media,
            "report": report,
            "rejected_rows": rejected[:TAG_IMPORT_ROWS_SHOWN],
            "rejected_more": max(len(rejected) - TAG_IMPORT_ROWS_SHOWN, 0),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/campaigns/segment/membertag_import.html", context)
