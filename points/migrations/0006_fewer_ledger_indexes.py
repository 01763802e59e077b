"""Fewer index insertions per ledger row (each earn paid for all of them):

- an entry's member and a purchase's store lose their own index: the indexes
  entry_member_time_idx and purchase_unique_receipt_per_store lead with them
  and serve every lookup by them;
- an entry's refund and operator are indexed only where set (most entries
  have neither, and every NULL was an insertion into each index).

The partial indexes are built concurrently: the till goes on meanwhile."""

import django.db.models.deletion
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("members", "0005_terminal_blocks"),
        ("points", "0005_purchase_member_spend_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="pointsentry",
            index=models.Index(condition=models.Q(("refund__isnull", False)), fields=["refund"], name="entry_refund_idx"),
        ),
        AddIndexConcurrently(
            model_name="pointsentry",
            index=models.Index(
                condition=models.Q(("by_user__isnull", False)), fields=["by_user"], name="entry_by_user_idx"
            ),
        ),
        migrations.AlterField(
            model_name="pointsentry",
            name="by_user",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
                verbose_name="by operator",
            ),
        ),
        migrations.AlterField(
            model_name="pointsentry",
            name="member",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="points_entries",
                to="members.member",
                verbose_name="member",
            ),
        ),
        migrations.AlterField(
            model_name="pointsentry",
            name="refund",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="points.refund",
                verbose_name="refund",
            ),
        ),
        migrations.AlterField(
            model_name="purchase",
            name="store",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="purchases",
                to="members.store",
                verbose_name="store",
            ),
        ),
    ]
