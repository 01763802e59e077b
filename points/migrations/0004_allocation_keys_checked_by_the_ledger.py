"""Allocations' keys without foreign-key constraints (``PointsAllocation`` says
why); lots now refuse DELETE as entries do, so what an allocation points to
can never go. ``check_ledger`` finds an allocation whose entry or lot is missing."""

import django.db.models.deletion
from django.db import migrations, models

LOT_NO_DELETE = """
CREATE TRIGGER points_lot_no_delete BEFORE DELETE ON points_pointslot
    FOR EACH ROW EXECUTE FUNCTION points_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("points", "0003_purchase_claim_refund_offset"),
    ]

    operations = [
        migrations.RunSQL(LOT_NO_DELETE, "DROP TRIGGER IF EXISTS points_lot_no_delete ON points_pointslot;"),
        migrations.AlterField(
            model_name="pointsallocation",
            name="entry",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="points.pointsentry",
                verbose_name="entry",
            ),
        ),
        migrations.AlterField(
            model_name="pointsallocation",
            name="lot",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="points.pointslot",
                verbose_name="lot",
            ),
        ),
    ]
