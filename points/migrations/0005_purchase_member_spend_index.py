"""A covering index for a member's qualifying spend (member, paid_at, with the
amounts): read from the index alone at the till and by the nightly tier
evaluation. It also serves every lookup by member, so the member key's own
index goes. Built and dropped concurrently: purchases go on meanwhile."""

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("members", "0005_terminal_blocks"),
        ("points", "0004_allocation_keys_checked_by_the_ledger"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="purchase",
            index=models.Index(
                fields=["member", "paid_at"], include=("amount", "refunded_amount"), name="purchase_member_spend_idx"
            ),
        ),
        RemoveIndexConcurrently(model_name="purchase", name="purchase_member_paid_idx"),
        migrations.AlterField(
            model_name="purchase",
            name="member",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="purchases",
                to="members.member",
                verbose_name="member",
            ),
        ),
    ]
