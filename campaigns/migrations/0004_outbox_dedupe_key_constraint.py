"""The outbox's de-duplication key is unique through a constraint instead of
``unique=True``, which also made a LIKE-pattern index (varchar_pattern_ops)
that no query uses and every message paid for. The constraint comes first, so
the key is never without its unique index."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0003_campaigns_segments_outbox"),
        ("members", "0005_terminal_blocks"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="outboxmessage",
            constraint=models.UniqueConstraint(fields=("dedupe_key",), name="outbox_dedupe_key_unique"),
        ),
        migrations.AlterField(
            model_name="outboxmessage",
            name="dedupe_key",
            field=models.CharField(max_length=150, verbose_name="de-duplication key"),
        ),
    ]
