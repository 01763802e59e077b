"""The outbox's de-duplication key is unique through a constraint instead of
``unique=True``, which also made a LIKE-pattern index (varchar_pattern_ops)
that no query uses and every message paid for.

Every purchase that earns writes a message, so the table is large and the
till must not wait on it: the new unique index is built concurrently, then
becomes the constraint (``USING INDEX``: no second build, a brief lock); only
then do the old constraint and the LIKE index go, so the key is never without
its unique index."""

from django.db import migrations, models

TABLE = "campaigns_outboxmessage"
NAME = "outbox_dedupe_key_unique"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("campaigns", "0003_campaigns_segments_outbox"),
        ("members", "0005_terminal_blocks"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[
                f'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "{NAME}" ON "{TABLE}" ("dedupe_key")',
                f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{NAME}" UNIQUE USING INDEX "{NAME}"',
            ],
            reverse_sql=[f'ALTER TABLE "{TABLE}" DROP CONSTRAINT "{NAME}"'],
            state_operations=[
                migrations.AddConstraint(
                    model_name="outboxmessage",
                    constraint=models.UniqueConstraint(fields=("dedupe_key",), name=NAME),
                ),
            ],
        ),
        migrations.AlterField(
            model_name="outboxmessage",
            name="dedupe_key",
            field=models.CharField(max_length=150, verbose_name="de-duplication key"),
        ),
    ]
