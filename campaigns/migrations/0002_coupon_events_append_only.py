"""Coupon history is append-only, like the points ledger."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0001_initial"), ("points", "0002_append_only")]

    operations = [
        migrations.RunSQL(
            "CREATE TRIGGER campaigns_couponevent_append_only BEFORE UPDATE OR DELETE ON campaigns_couponevent "
            "FOR EACH ROW EXECUTE FUNCTION points_refuse_change();",
            "DROP TRIGGER IF EXISTS campaigns_couponevent_append_only ON campaigns_couponevent;",
        )
    ]
