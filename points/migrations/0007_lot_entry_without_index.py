"""A lot's entry loses its own index.

Every lookup of an entry's lots also names the entry's member (refunds, the
"points earned" message, the admin's entry page and receipt search), and the
member's index finds a member's few lots. The nightly expiry rewrites every
lot it empties (the open-lot indexes are partial on ``remaining > 0``, so the
update cannot be HOT) and each rewrite inserted into this index at a page of
its own; each earn inserted into it too (docs/performance.md, session 15).

Dropped concurrently: the till goes on meanwhile."""

import django.db.models.deletion
from django.db import migrations, models

INDEX = "points_pointslot_entry_id_17aca423"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("points", "0006_fewer_ledger_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="pointslot",
                    name="entry",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="lots",
                        to="points.pointsentry",
                        verbose_name="opened by",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX CONCURRENTLY IF EXISTS "{INDEX}"',
                    reverse_sql=f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{INDEX}" ON "points_pointslot" ("entry_id")',
                ),
            ],
        ),
    ]
