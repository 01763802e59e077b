"""Admin of members, tiers, stores, terminals and staff profiles.

The admin stays thin: every write to a member or a terminal (enrol, freeze,
unfreeze, close, tier change, terminal creation, key rotation, revocation)
calls ``members.services``; an existing member is never saved by the admin.
Audit rows (``TierChange``, ``MemberEvent``) and hashed API keys are read-only
for everyone, superusers included.

Two access rules apply on top of the role permissions (``loyalty.roles``):

* full phone numbers need ``members.view_member_phone``; everyone else sees
  ``Member.masked_phone`` (list, detail, search results, confirmation pages)
  and cannot filter on the phone through the URL;
* a member of the "Store manager" group sees only the store of their
  ``StaffProfile``, its terminals and the members registered there; anything
  else is a 404, so that other stores' members are not even confirmed to exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _
from rest_framework_api_key.models import APIKey

from loyalty import throttle
from loyalty.errors import LoyaltyError
from loyalty.roles import CLERK, STORE_MANAGER
from members.errors import InvalidPhone
from members.models import (
    Member,
    MemberEvent,
    MemberTag,
    StaffProfile,
    Store,
    Terminal,
    TerminalAPIKey,
    Tier,
    TierChange,
    mask_phone,
)
from members.services import (
    member_close,
    member_enrol,
    member_freeze,
    member_set_tier,
    member_unfreeze,
    phone_normalise,
    terminal_create,
    terminal_key_rotate,
    terminal_revoke,
)

PHONE_PERMISSION = "members.view_member_phone"
# Roles bound to one store (StaffProfile.store): their admin views are limited to it.
STORE_BOUND_ROLES = (STORE_MANAGER, CLERK)
# Rows listed on a confirmation page; the rest are counted, not listed.
CONFIRMATION_ROWS_SHOWN = 100


# -----------------------------------------------------------------------------
# Access rules
# -----------------------------------------------------------------------------
def can_view_phone(request: HttpRequest) -> bool:
    return request.user.has_perm(PHONE_PERMISSION)


@dataclass(frozen=True)
class StoreScope:
    """A store manager's view of the data: one store, or nothing at all when
    the user has no store (``store_id`` is None)."""

    store_id: int | None


def store_scope(request: HttpRequest) -> StoreScope | None:
    """The store ``request.user`` is limited to, or None for staff who see every
    store. Membership of a store-bound group limits a user even if another
    group would not: the narrower view wins. Cached on the request."""
    cached = getattr(request, "_loyalty_store_scope", False)
    if cached is not False:
        return cached
    user = request.user
    scope = None
    if not user.is_superuser and user.groups.filter(name__in=STORE_BOUND_ROLES).exists():
        store_id = StaffProfile.objects.filter(user=user).values_list("store_id", flat=True).first()
        scope = StoreScope(store_id=store_id)
    request._loyalty_store_scope = scope  # type: ignore[attr-defined]
    return scope


def stores_visible(request: HttpRequest) -> QuerySet[Store]:
    scope = store_scope(request)
    stores = Store.objects.order_by("code")
    if scope is None:
        return stores
    return stores.filter(pk=scope.store_id) if scope.store_id is not None else stores.none()


def _phone_or_none(text: str) -> str | None:
    try:
        return phone_normalise(text)
    except InvalidPhone:
        return None


def _mask_personal_data(data: Any) -> Any:
    """Event data with any value under a key naming a phone masked."""
    if isinstance(data, dict):
        return {
            key: mask_phone(value) if "phone" in str(key) and isinstance(value, str) else _mask_personal_data(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_mask_personal_data(value) for value in data]
    return data


class ScopedStoreListFilter(admin.RelatedFieldListFilter):
    """A filter on a store foreign key offering only the stores the user may see."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        return [(store.pk, str(store)) for store in stores_visible(request)]


def _filter_field(item: Any) -> str:
    if isinstance(item, str):
        return item.split(LOOKUP_SEP, 1)[0]
    if isinstance(item, (list, tuple)):
        return str(item[0]).split(LOOKUP_SEP, 1)[0]
    return str(getattr(item, "parameter_name", ""))


class LoyaltyModelAdmin(admin.ModelAdmin):
    """Base of this app's admins.

    * ``store_scope_field``: the lookup from the model to its store's pk, used
      to limit store managers to their store (None: not scoped, for data that
      belongs to no store, such as tiers).
    * URL filters are limited to the fields of ``list_filter`` (plus
      ``extra_lookup_fields``). Django otherwise accepts any lookup on a local
      field, which would let a user probe ``?phone__startswith=`` or
      ``?code_secret__startswith=`` one character at a time.
    * Posting an action the user may not run is a 403, not a silent no-op.
    """

    store_scope_field: str | None = None
    extra_lookup_fields: tuple[str, ...] = ()
    # A full COUNT(*) per page is slow on a large member table.
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        scope = store_scope(request) if self.store_scope_field else None
        if scope is None:
            return queryset
        if scope.store_id is None:
            return queryset.none()
        return queryset.filter(**{self.store_scope_field: scope.store_id})

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None and self.store_scope_field and store_scope(request) is not None:
            # Out of the manager's store, or absent: the same answer for both.
            raise Http404(gettext("No such object in your store."))
        return obj

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        allowed = {_filter_field(item) for item in self.get_list_filter(request)}
        allowed.update(self.extra_lookup_fields)
        if self.date_hierarchy:
            allowed.add(self.date_hierarchy.split(LOOKUP_SEP, 1)[0])
        if lookup.split(LOOKUP_SEP, 1)[0] not in allowed:
            return False
        return super().lookup_allowed(lookup, value, request)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "POST":
            declared = {self._action_name(action) for action in self.actions or ()} | {"delete_selected"}
            posted = {name for name in request.POST.getlist("action") if name}
            if posted & (declared - set(self.get_actions(request))):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)

    @staticmethod
    def _action_name(action: Any) -> str:
        return action if isinstance(action, str) else getattr(action, "__name__", "")


class ReadOnlyAdminMixin:
    """The audit trail and hashed keys: viewable with the view permission,
    never added, changed or deleted through the admin, even by a superuser."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True


def _adopt_saved(saved: Model, obj: Model) -> None:
    """Turn the admin's unsaved ``obj`` into the row a service saved, so that the
    rest of the add view (log entry, redirect) works on it."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


# -----------------------------------------------------------------------------
# Operations with a confirmation page (actions and per-object buttons)
# -----------------------------------------------------------------------------
class ConfirmForm(forms.Form):
    """No input: the confirmation is the submit itself."""


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=255,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
        help_text=_("Recorded in the member's history."),
    )


class TagForm(forms.Form):
    tags = forms.ModelMultipleChoiceField(
        queryset=MemberTag.objects.none(), label=_("Tags"), required=False, widget=forms.CheckboxSelectMultiple
    )
    new_tag = forms.CharField(label=_("New tag"), max_length=50, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tags"].queryset = MemberTag.objects.order_by("name")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("tags") and not (data.get("new_tag") or "").strip():
            raise forms.ValidationError(_("Choose a tag or type a new one."))
        return data


class TierSetForm(ReasonForm):
    tier = forms.ModelChoiceField(queryset=Tier.objects.none(), label=_("New tier"))
    override_until = forms.DateTimeField(
        label=_("Keep this tier until"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=_("Optional: the tier is not downgraded by evaluation before this time."),
    )

    field_order = ["tier", "override_until", "reason"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tier"].queryset = Tier.objects.filter(is_active=True).order_by("rank")

    def clean_override_until(self) -> Any:
        value = self.cleaned_data["override_until"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError(_("This time is already past."), code="override_until_past")
        return value


class OperationRefused(Exception):
    """An operation the admin declines for one object; the message is shown."""


@dataclass(frozen=True)
class Operation:
    name: str  # URL segment of the per-object page
    label: Any  # button label
    title: Any  # confirmation page title
    submit_label: Any
    done: Any  # ngettext_lazy with %(count)d
    run: Callable[[HttpRequest, Any, dict[str, Any]], object]
    form_class: type[forms.Form] = ConfirmForm
    warning: Any = None
    available: Callable[[Any], bool] = lambda obj: True


class OperationsAdminMixin(LoyaltyModelAdmin):
    """Operations that need a confirmation page, available both as changelist
    actions and as buttons on the object's page (``operations``). Each object
    is handled in its own service call: a refusal for one member is reported
    and leaves it unchanged without stopping the others."""

    operations: dict[str, Operation] = {}
    change_form_template = "admin/members/change_form_operations.html"

    def get_urls(self) -> list[URLPattern]:
        # Before the default "<path:object_id>/" catch-all.
        own = [
            path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(self.operation_view),
                {"operation": name},
                name=f"{self.opts.app_label}_{self.opts.model_name}_{name}",
            )
            for name in self.operations
        ]
        return own + super().get_urls()

    def operation_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        response = self.run_operation(request, [obj], self.operations[operation], original=obj)
        if response is not None:
            return response
        return HttpResponseRedirect(self.admin_url("change", obj.pk))

    def admin_url(self, view: str, *args: Any) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}"
        return reverse(name, args=args, current_app=self.admin_site.name)

    def run_action(self, request: HttpRequest, queryset: QuerySet[Any], operation: str, action: str) -> Any:
        return self.run_operation(request, list(queryset), self.operations[operation], action=action)

    def run_operation(
        self,
        request: HttpRequest,
        objects: Sequence[Any],
        operation: Operation,
        *,
        action: str | None = None,
        original: Any = None,
    ) -> HttpResponse | None:
        """The confirmation page, or None once the operation ran (the caller redirects)."""
        confirmed = request.method == "POST" and request.POST.get("post") == "yes"
        form = operation.form_class(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            done = 0
            for obj in objects:
                try:
                    operation.run(request, obj, form.cleaned_data)
                except (LoyaltyError, OperationRefused) as exc:
                    text = exc.render_message() if isinstance(exc, LoyaltyError) else str(exc)
                    self.message_user(
                        request, gettext("%(object)s: %(error)s") % {"object": obj, "error": text}, messages.ERROR
                    )
                else:
                    done += 1
                    self.log_change(request, obj, str(operation.title))
            if done:
                self.message_user(request, operation.done % {"count": done}, messages.SUCCESS)
            return None
        cancel_url = self.admin_url("change", original.pk) if original is not None else request.get_full_path()
        context = {
            **self.admin_site.each_context(request),
            "title": operation.title,
            "opts": self.opts,
            "original": original,
            "warning": operation.warning,
            "headers": self.operation_headers(request),
            "rows": [self.operation_row(request, obj) for obj in objects[:CONFIRMATION_ROWS_SHOWN]],
            "more": max(len(objects) - CONFIRMATION_ROWS_SHOWN, 0),
            "form": form,
            "media": self.media + form.media,
            "action": action,
            "pks": [obj.pk for obj in objects] if action else [],
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "submit_label": operation.submit_label,
            "cancel_url": cancel_url,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/members/confirm_operation.html", context)

    def operation_headers(self, request: HttpRequest) -> list[Any]:
        return [self.opts.verbose_name]

    def operation_row(self, request: HttpRequest, obj: Any) -> list[Any]:
        return [obj]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if change and obj is not None:
            # Existing objects change only through the operations below.
            context.update(show_save=False, show_save_and_continue=False, show_save_and_add_another=False)
            buttons = []
            if self.has_change_permission(request, obj):
                for name, operation in self.operations.items():
                    if operation.available(obj):
                        buttons.append((operation.label, self.admin_url(name, obj.pk)))
            context["operation_buttons"] = buttons + list(self.extra_object_links(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def extra_object_links(self, request: HttpRequest, obj: Any) -> Iterable[tuple[Any, str]]:
        return ()


# -----------------------------------------------------------------------------
# Members
# -----------------------------------------------------------------------------
def _member_freeze(request: HttpRequest, member: Member, data: dict[str, Any]) -> object:
    return member_freeze(member=member, by_user=request.user, reason=data["reason"])


def _member_unfreeze(request: HttpRequest, member: Member, data: dict[str, Any]) -> object:
    return member_unfreeze(member=member, by_user=request.user, reason=data["reason"])


def _member_close(request: HttpRequest, member: Member, data: dict[str, Any]) -> object:
    return member_close(member=member, by_user=request.user, reason=data["reason"])


def _member_set_tier(request: HttpRequest, member: Member, data: dict[str, Any]) -> object:
    return member_set_tier(
        member=member,
        tier=data["tier"],
        by_user=request.user,
        reason=data["reason"],
        override_until=data["override_until"],
    )


def _member_tag(request: HttpRequest, member: Member, data: dict[str, Any]) -> object:
    from campaigns.services.segments import member_tags_set  # campaigns depends on members

    tags = list(data.get("tags") or [])
    name = (data.get("new_tag") or "").strip()
    if name:
        tag, _created = MemberTag.objects.get_or_create(name=name)
        tags.append(tag)
    return member_tags_set(members=[member], tags=tags, by_user=request.user)


MEMBER_OPERATIONS = {
    "freeze": Operation(
        name="freeze",
        label=_("Freeze"),
        title=_("Freeze members"),
        submit_label=_("Freeze"),
        done=ngettext_lazy("%(count)d member frozen.", "%(count)d members frozen.", "count"),
        run=_member_freeze,
        form_class=ReasonForm,
        warning=_("A frozen member can still be identified but cannot earn, redeem or write off coupons."),
        available=lambda member: member.status == Member.Status.ACTIVE,
    ),
    "unfreeze": Operation(
        name="unfreeze",
        label=_("Unfreeze"),
        title=_("Unfreeze members"),
        submit_label=_("Unfreeze"),
        done=ngettext_lazy("%(count)d member unfrozen.", "%(count)d members unfrozen.", "count"),
        run=_member_unfreeze,
        form_class=ReasonForm,
        available=lambda member: member.status == Member.Status.FROZEN,
    ),
    "close": Operation(
        name="close",
        label=_("Close account"),
        title=_("Close member accounts"),
        submit_label=_("Close the accounts"),
        done=ngettext_lazy("%(count)d member account closed.", "%(count)d member accounts closed.", "count"),
        run=_member_close,
        form_class=ReasonForm,
        warning=_(
            "Closing erases the phone number, name and birthday and signs the member out everywhere. "
            "The member number and the points ledger are kept. This cannot be undone."
        ),
        available=lambda member: member.status != Member.Status.CLOSED,
    ),
    "tag": Operation(
        name="tag",
        label=_("Add tags"),
        title=_("Add tags to members"),
        submit_label=_("Add tags"),
        done=ngettext_lazy("Tags added to %(count)d member.", "Tags added to %(count)d members.", "count"),
        run=_member_tag,
        form_class=TagForm,
        available=lambda member: member.status != Member.Status.CLOSED,
    ),
    "tier": Operation(
        name="tier",
        label=_("Change tier"),
        title=_("Change the tier of members"),
        submit_label=_("Change tier"),
        done=ngettext_lazy("Tier changed for %(count)d member.", "Tier changed for %(count)d members.", "count"),
        run=_member_set_tier,
        form_class=TierSetForm,
        available=lambda member: member.status != Member.Status.CLOSED,
    ),
}


class MemberAddForm(forms.ModelForm):
    """Input of ``member_enrol``; the admin never saves this form itself."""

    class Meta:
        model = Member
        fields = [
            "phone",
            "name",
            "gender",
            "birthday",
            "registration_store",
            "channel",
            "referrer",
            "marketing_consent",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["phone"].required = True
        self.fields["phone"].help_text = _("Mainland mobile number, e.g. 13812345678.")

    def clean_phone(self) -> str:
        try:
            phone = phone_normalise(self.cleaned_data["phone"] or "")
        except InvalidPhone as exc:
            raise forms.ValidationError(exc.render_message(), code=exc.code) from None
        existing = Member.objects.filter(phone=phone).values_list("member_no", flat=True).first()
        if existing is not None:
            raise forms.ValidationError(
                _("This phone number is already registered to member %(member_no)s."),
                code="phone_registered",
                params={"member_no": existing},
            )
        return phone


class TierChangeInline(ReadOnlyInline):
    model = TierChange
    fk_name = "member"
    fields = ["created_at", "from_tier", "to_tier", "reason", "note", "override_until", "by_user"]
    readonly_fields = fields
    verbose_name_plural = _("tier history")


class MemberEventInline(ReadOnlyInline):
    model = MemberEvent
    fk_name = "member"
    verbose_name_plural = _("events")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        data = "data" if can_view_phone(request) else "data_masked"
        return ["created_at", "kind", "reason", data, "by_user", "by_terminal"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj)

    @admin.display(description=_("data"))
    def data_masked(self, obj: MemberEvent) -> Any:
        return _mask_personal_data(obj.data)


@admin.register(Member)
class MemberAdmin(OperationsAdminMixin):
    operations = MEMBER_OPERATIONS
    store_scope_field = "registration_store"
    list_filter = [
        "status",
        "tier",
        ("registration_store", ScopedStoreListFilter),
        "channel",
        "lifecycle_stage",
        "rfm_group",
        "tags",
    ]
    list_select_related = ["tier", "registration_store"]
    # The phone is searched separately: exact, normalised (see get_search_results).
    search_fields = ["=member_no", "name"]
    search_help_text = _("Full phone number, member number or name.")
    raw_id_fields = ["referrer"]
    actions = ["freeze_members", "unfreeze_members", "close_members", "set_tier_members", "tag_members"]

    def get_urls(self) -> list[URLPattern]:
        # Before the default "<path:object_id>/" catch-all.
        own = [path("import/", self.admin_site.admin_view(self.import_view), name="members_member_import")]
        return own + super().get_urls()

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """The CSV import page (``members.admin_views``), which checks ``add_member`` itself."""
        from members.admin_views import member_import_view

        return member_import_view(request)

    def get_list_display(self, request: HttpRequest) -> list[str]:
        phone = "phone" if can_view_phone(request) else "phone_masked"
        return ["member_no", phone, "name", "tier", "status", "registration_store", "channel", "created_at"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[Any, dict[str, Any]]]:
        if obj is None:
            return [
                (None, {"fields": ["phone", "name", "gender", "birthday"]}),
                (_("Membership"), {"fields": ["registration_store", "channel", "referrer", "marketing_consent"]}),
            ]
        phone = "phone" if can_view_phone(request) else "phone_masked"
        return [
            (None, {"fields": ["member_no", phone, "name", "gender", "birthday", "status", "closed_at"]}),
            (
                _("Membership"),
                {
                    "fields": [
                        "tier",
                        "tier_since",
                        "tier_override_until",
                        "registration_store",
                        "channel",
                        "referrer",
                        "marketing_consent",
                        "wechat_bound",
                        "created_at",
                        "updated_at",
                    ]
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        # An existing member changes only through the services behind the operations.
        return [field for _name, options in self.get_fieldsets(request, obj) for field in options["fields"]]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = MemberAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type[admin.options.InlineModelAdmin]]:
        return [TierChangeInline, MemberEventInline] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Members are closed (personal data erased), never deleted: the ledger keeps pointing at them.
        return False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Member], search_term: str) -> Any:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        phone = _phone_or_none(search_term)
        if phone is not None:
            results = results | queryset.filter(phone=phone)
        return results, may_have_duplicates

    def save_model(self, request: HttpRequest, obj: Member, form: Any, change: bool) -> None:
        if change:
            # Every field of an existing member is read-only here; nothing to save.
            return
        data = form.cleaned_data
        member, created = member_enrol(
            phone=data["phone"],
            name=data["name"],
            birthday=data["birthday"],
            gender=data["gender"],
            store=data["registration_store"],
            channel=data["channel"],
            referrer=data["referrer"],
            marketing_consent=data["marketing_consent"],
            by_user=request.user,
        )
        if not created:
            # Enrolled concurrently (by a till, say) since the form was checked.
            self.message_user(
                request,
                gettext("This phone number was already registered to member %(member_no)s.")
                % {"member_no": member.member_no},
                messages.WARNING,
            )
        _adopt_saved(member, obj)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Inlines are read-only and the member has no many-to-many fields.
        return

    @admin.display(description=_("mobile phone"))
    def phone_masked(self, obj: Member) -> str | None:
        return obj.masked_phone or None

    @admin.display(description=_("WeChat bound"), boolean=True)
    def wechat_bound(self, obj: Member) -> bool:
        return bool(obj.wechat_openid)

    def operation_headers(self, request: HttpRequest) -> list[Any]:
        return [_("member number"), _("mobile phone"), _("name"), _("status"), _("tier")]

    def operation_row(self, request: HttpRequest, obj: Member) -> list[Any]:
        phone = obj.phone if can_view_phone(request) else obj.masked_phone
        return [obj.member_no, phone or "", obj.name, obj.get_status_display(), obj.tier]

    def extra_object_links(self, request: HttpRequest, obj: Member) -> Iterable[tuple[Any, str]]:
        for model, label in ((TierChange, _("Tier history")), (MemberEvent, _("All events"))):
            if request.user.has_perm(f"members.view_{model._meta.model_name}"):
                url = reverse(f"admin:members_{model._meta.model_name}_changelist", current_app=self.admin_site.name)
                yield label, f"{url}?member__id__exact={obj.pk}"
        from points.admin import member_points_links  # points.admin imports this module

        yield from member_points_links(request, obj)

    @admin.action(description=_("Freeze selected members…"), permissions=["change"])
    def freeze_members(self, request: HttpRequest, queryset: QuerySet[Member]) -> Any:
        return self.run_action(request, queryset, "freeze", "freeze_members")

    @admin.action(description=_("Unfreeze selected members…"), permissions=["change"])
    def unfreeze_members(self, request: HttpRequest, queryset: QuerySet[Member]) -> Any:
        return self.run_action(request, queryset, "unfreeze", "unfreeze_members")

    @admin.action(description=_("Close selected member accounts…"), permissions=["change"])
    def close_members(self, request: HttpRequest, queryset: QuerySet[Member]) -> Any:
        return self.run_action(request, queryset, "close", "close_members")

    @admin.action(description=_("Change the tier of selected members…"), permissions=["change"])
    def set_tier_members(self, request: HttpRequest, queryset: QuerySet[Member]) -> Any:
        return self.run_action(request, queryset, "tier", "set_tier_members")

    @admin.action(description=_("Add tags to selected members…"), permissions=["change"])
    def tag_members(self, request: HttpRequest, queryset: QuerySet[Member]) -> Any:
        return self.run_action(request, queryset, "tag", "tag_members")


class MemberSearchMixin:
    """Search audit rows by the member's number or exact phone."""

    search_fields = ["=member__member_no"]
    search_help_text = _("Member number or phone number.")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        results, may_have_duplicates = super().get_search_results(  # type: ignore[misc]
            request, queryset, search_term
        )
        phone = _phone_or_none(search_term)
        if phone is not None:
            results = results | queryset.filter(member__phone=phone)
        return results, may_have_duplicates


@admin.register(TierChange)
class TierChangeAdmin(ReadOnlyAdminMixin, MemberSearchMixin, LoyaltyModelAdmin):
    store_scope_field = "member__registration_store"
    list_display = ["created_at", "member", "from_tier", "to_tier", "reason", "note", "override_until", "by_user"]
    list_filter = ["reason", "to_tier", "created_at"]
    list_select_related = ["member", "from_tier", "to_tier", "by_user"]
    extra_lookup_fields = ("member",)
    fields = [
        "member",
        "from_tier",
        "to_tier",
        "reason",
        "note",
        "qualifying_spend",
        "override_until",
        "by_user",
        "created_at",
    ]
    readonly_fields = fields


@admin.register(MemberEvent)
class MemberEventAdmin(ReadOnlyAdminMixin, MemberSearchMixin, LoyaltyModelAdmin):
    store_scope_field = "member__registration_store"
    list_display = ["created_at", "member", "kind", "reason", "by_user", "by_terminal"]
    list_filter = ["kind", "created_at"]
    list_select_related = ["member", "by_user", "by_terminal__store"]
    extra_lookup_fields = ("member",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        data = "data" if can_view_phone(request) else "data_masked"
        return ["member", "kind", "reason", data, "by_user", "by_terminal", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj)

    @admin.display(description=_("data"))
    def data_masked(self, obj: MemberEvent) -> Any:
        return _mask_personal_data(obj.data)


# -----------------------------------------------------------------------------
# Tiers and stores
# -----------------------------------------------------------------------------
@admin.register(Tier)
class TierAdmin(LoyaltyModelAdmin):
    list_display = [
        "rank",
        "code",
        "name",
        "threshold",
        "earn_multiplier",
        "discount_rate",
        "validity_months",
        "is_active",
    ]
    list_display_links = ["code", "name"]
    list_filter = ["is_active"]
    ordering = ["rank"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The code is what events, webhooks and clients refer to.
        return ["code"] if obj is not None else []


class TerminalInline(ReadOnlyInline):
    model = Terminal
    fields = ["name", "is_active", "created_at"]
    readonly_fields = fields


@admin.register(Store)
class StoreAdmin(LoyaltyModelAdmin):
    store_scope_field = "pk"
    list_display = ["code", "name", "city", "is_active", "created_at"]
    list_filter = ["is_active", "city"]
    search_fields = ["code", "name", "city"]
    inlines = [TerminalInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The code is the store's identity in imports, API key names and reports.
        return ["code", "created_at", "updated_at"] if obj is not None else []


# -----------------------------------------------------------------------------
# Terminals and their keys
# -----------------------------------------------------------------------------
def _terminal_revoke(request: HttpRequest, terminal: Terminal, data: dict[str, Any]) -> object:
    return terminal_revoke(terminal=terminal)


def _terminal_key_rotate(request: HttpRequest, terminal: Terminal, data: dict[str, Any]) -> object:
    if not terminal.is_active:
        raise OperationRefused(gettext("The terminal is revoked; a new key would not work."))
    key = terminal_key_rotate(terminal=terminal)
    messages.success(
        request,
        gettext("New API key of terminal %(terminal)s. It is shown only this once; copy it now: %(key)s")
        % {"terminal": terminal, "key": key},
    )
    return key


TERMINAL_OPERATIONS = {
    "revoke": Operation(
        name="revoke",
        label=_("Revoke"),
        title=_("Revoke terminals"),
        submit_label=_("Revoke"),
        done=ngettext_lazy("%(count)d terminal revoked.", "%(count)d terminals revoked.", "count"),
        run=_terminal_revoke,
        warning=_("The API keys of a revoked terminal stop working at once: the till can no longer record purchases."),
        available=lambda terminal: terminal.is_active,
    ),
    "rotate": Operation(
        name="rotate",
        label=_("Rotate API key"),
        title=_("Rotate the API keys of terminals"),
        submit_label=_("Rotate the keys"),
        done=ngettext_lazy("%(count)d terminal has a new API key.", "%(count)d terminals have a new API key.", "count"),
        run=_terminal_key_rotate,
        warning=_("The current keys stop working at once; the new key must be entered on the till."),
        available=lambda terminal: terminal.is_active,
    ),
}


class TerminalAPIKeyInline(ReadOnlyInline):
    model = TerminalAPIKey
    fields = ["prefix", "name", "created", "expiry_date", "revoked"]
    readonly_fields = fields
    show_change_link = False


_BLOCK_FIELDS = tuple(throttle.blocked_field(kind) for kind in throttle.KINDS)


@admin.register(Terminal)
class TerminalAdmin(OperationsAdminMixin):
    operations = TERMINAL_OPERATIONS
    store_scope_field = "store"
    list_display = ["__str__", "store", "name", "is_active", "created_at"]
    list_filter = ["is_active", ("store", ScopedStoreListFilter)]
    list_select_related = ["store"]
    search_fields = ["name", "store__code", "store__name"]
    actions = ["revoke_terminals", "rotate_terminal_keys"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["store", "name"]
        return ["store", "name", "is_active", *_BLOCK_FIELDS, "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # An existing terminal changes only through revoke / rotate, and its
        # blocks can be lifted (loyalty/throttle.py).
        if obj is None:
            return []
        return [f for f in self.get_fields(request, obj) if f not in _BLOCK_FIELDS]

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type[admin.options.InlineModelAdmin]]:
        return [TerminalAPIKeyInline] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Purchases and write-offs keep pointing at their terminal: revoke instead.
        return False

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "store":
            kwargs["queryset"] = stores_visible(request).filter(is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Terminal, form: Any, change: bool) -> None:
        if change:
            # Only the blocks can be changed here (lifted, or set by hand).
            blocks = [kind for kind in throttle.KINDS if throttle.blocked_field(kind) in form.changed_data]
            if blocks:
                Terminal.objects.filter(pk=obj.pk).update(
                    **{throttle.blocked_field(kind): getattr(obj, throttle.blocked_field(kind)) for kind in blocks}
                )
            for kind in blocks:
                if getattr(obj, throttle.blocked_field(kind)) is None:
                    throttle.failures_clear(kind=kind, terminal=obj)
            return
        terminal, key = terminal_create(store=form.cleaned_data["store"], name=form.cleaned_data["name"])
        _adopt_saved(terminal, obj)
        messages.success(
            request,
            gettext("API key of terminal %(terminal)s. It is shown only this once; copy it now: %(key)s")
            % {"terminal": terminal, "key": key},
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The key inline is read-only; keys are made by the service.
        return

    def construct_change_message(self, request: HttpRequest, form: Any, formsets: Any, add: bool = False) -> Any:
        # The key inline is never saved (above): the history names the terminal's own changes only.
        return super().construct_change_message(request, form, [], add)

    def operation_headers(self, request: HttpRequest) -> list[Any]:
        return [_("terminal"), _("store"), _("active")]

    def operation_row(self, request: HttpRequest, obj: Terminal) -> list[Any]:
        return [obj.name, obj.store, _("yes") if obj.is_active else _("no")]

    @admin.action(description=_("Revoke selected terminals…"), permissions=["change"])
    def revoke_terminals(self, request: HttpRequest, queryset: QuerySet[Terminal]) -> Any:
        return self.run_action(request, queryset, "revoke", "revoke_terminals")

    @admin.action(description=_("Rotate the API keys of selected terminals…"), permissions=["change"])
    def rotate_terminal_keys(self, request: HttpRequest, queryset: QuerySet[Terminal]) -> Any:
        return self.run_action(request, queryset, "rotate", "rotate_terminal_keys")


@admin.register(TerminalAPIKey)
class TerminalAPIKeyAdmin(ReadOnlyAdminMixin, LoyaltyModelAdmin):
    """Only hashes are stored; keys are made by terminal creation and rotation."""

    store_scope_field = "terminal__store"
    list_display = ["prefix", "terminal", "name", "created", "expiry_date", "revoked"]
    list_filter = ["revoked", "created"]
    list_select_related = ["terminal__store"]
    search_fields = ["prefix", "name"]
    fields = ["prefix", "terminal", "name", "created", "expiry_date", "revoked"]
    readonly_fields = fields


# The library's own key model is not used (terminals authenticate with
# TerminalAPIKey); its admin would mint keys bound to no terminal.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


# -----------------------------------------------------------------------------
# Staff
# -----------------------------------------------------------------------------
class SuperuserEditsMixin:
    """Binding staff to stores decides what store managers see: superusers only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


@admin.register(StaffProfile)
class StaffProfileAdmin(SuperuserEditsMixin, LoyaltyModelAdmin):
    store_scope_field = "store"
    list_display = ["user", "store"]
    list_filter = [("store", ScopedStoreListFilter)]
    list_select_related = ["user", "store"]
    search_fields = ["user__username", "user__first_name", "user__last_name", "store__code", "store__name"]
    raw_id_fields = ["user"]


class StaffProfileInline(SuperuserEditsMixin, admin.StackedInline):
    model = StaffProfile
    fk_name = "user"
    can_delete = True
    extra = 0
    max_num = 1


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type[admin.options.InlineModelAdmin]]:
        return [StaffProfileInline] if obj is not None else []
