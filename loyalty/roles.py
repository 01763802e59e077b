"""Staff roles as Django groups, and the permissions each one holds.

Groups are created by a migration (members 0002) and their permissions are
re-synchronised after every ``migrate`` (new apps bring new models), so the
table below is the single source of truth. Superusers hold every permission.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_noop

OPERATOR = gettext_noop("Operator")
MARKETING = gettext_noop("Marketing")
AUDITOR = gettext_noop("Auditor")
STORE_MANAGER = gettext_noop("Store manager")
CLERK = gettext_noop("Clerk")

# app_label -> model -> actions. "*" as a model means every model of the app.
ROLE_PERMISSIONS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    OPERATOR: {
        "members": {
            "member": ("view", "add", "change"),
            "tier": ("view", "add", "change"),
            "store": ("view", "add", "change"),
            "terminal": ("view", "add", "change"),
            "terminalapikey": ("view",),
            "tierchange": ("view",),
            "memberevent": ("view",),
            "staffprofile": ("view",),
            "membertag": ("view", "add", "change"),
        },
        "points": {"*": ("view", "add", "change")},
        "campaigns": {"*": ("view", "add", "change")},
        "reports": {"*": ("view",)},
    },
    MARKETING: {
        "members": {
            "member": ("view",),
            "tier": ("view",),
            "store": ("view",),
            "tierchange": ("view",),
            "membertag": ("view", "add", "change"),
        },
        "points": {"*": ("view",)},
        "campaigns": {"*": ("view", "add", "change")},
        "reports": {"*": ("view",)},
    },
    AUDITOR: {
        "members": {"*": ("view",)},
        "points": {"*": ("view",)},
        "campaigns": {"*": ("view",)},
        "reports": {"*": ("view",)},
        "loyalty": {"*": ("view",)},
    },
    STORE_MANAGER: {
        "members": {"member": ("view",), "store": ("view",), "terminal": ("view",), "tierchange": ("view",)},
        "points": {"*": ("view",)},
        "campaigns": {"coupon": ("view",)},
        "reports": {"*": ("view",)},
    },
}

ROLE_PERMISSIONS[CLERK] = {}

# Extra permissions beyond view/add/change/delete.
ROLE_EXTRA_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    OPERATOR: (("members", "view_member_phone"),),
    AUDITOR: (),
    MARKETING: (),
    STORE_MANAGER: (("members", "use_console"),),
    CLERK: (("members", "use_console"),),
}


def roles_sync(group_model: Any, permission_model: Any) -> None:
    """Create the role groups and set exactly the permissions of the table.

    Takes the models as arguments so a migration can pass historical ones.
    """
    for role, apps in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        wanted = []
        for app_label, models in apps.items():
            for model, actions in models.items():
                queryset = permission_model.objects.filter(content_type__app_label=app_label)
                if model != "*":
                    queryset = queryset.filter(content_type__model=model)
                codenames = []
                for perm in queryset.select_related("content_type"):
                    action = perm.codename.split("_", 1)[0]
                    if action in actions and perm.codename == f"{action}_{perm.content_type.model}":
                        codenames.append(perm.pk)
                wanted.extend(codenames)
        for app_label, codename in ROLE_EXTRA_PERMISSIONS[role]:
            wanted.extend(
                permission_model.objects.filter(content_type__app_label=app_label, codename=codename).values_list(
                    "pk", flat=True
                )
            )
        group.permissions.set(wanted)


def roles_sync_after_migrate(**kwargs: Any) -> None:
    from django.contrib.auth.models import Group, Permission

    roles_sync(Group, Permission)
