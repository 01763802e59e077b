"""Default tiers, the member number sequence and the staff role groups."""

from decimal import Decimal

from django.contrib.auth.management import create_permissions
from django.db import migrations

DEFAULT_TIERS = [
    # code, name, rank, threshold (CNY, rolling 12 months), earn multiplier, discount rate
    ("silver", "银卡 Silver", 1, Decimal("0.00"), Decimal("1.00"), Decimal("0.95")),
    ("gold", "金卡 Gold", 2, Decimal("5000.00"), Decimal("1.25"), Decimal("0.88")),
    ("platinum", "白金卡 Platinum", 3, Decimal("20000.00"), Decimal("1.50"), Decimal("0.75")),
]


def create_tiers(apps, schema_editor):
    Tier = apps.get_model("members", "Tier")
    for code, name, rank, threshold, multiplier, discount in DEFAULT_TIERS:
        Tier.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "rank": rank,
                "threshold": threshold,
                "earn_multiplier": multiplier,
                "discount_rate": discount,
            },
        )


def create_groups(apps, schema_editor):
    from loyalty.roles import roles_sync

    # Permissions are normally created after migrate; create them now so the
    # groups get theirs in this migration.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_sync(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("members", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE SEQUENCE IF NOT EXISTS members_member_no_seq START 1",
            "DROP SEQUENCE IF EXISTS members_member_no_seq",
        ),
        migrations.RunPython(create_tiers, migrations.RunPython.noop),
        migrations.RunPython(create_groups, migrations.RunPython.noop),
    ]
