"""Ledger entries and allocations are append-only: the database refuses
UPDATE and DELETE on them, whatever code (or admin, or psql user) tries.
(TRUNCATE stays possible: it is how test runs reset the database; it needs
table ownership, which the application's role should not have in production.)"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION points_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_immutable: % on % is not allowed (append-only)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
"""

TRIGGERS = """
CREATE TRIGGER points_entry_append_only BEFORE UPDATE OR DELETE ON points_pointsentry
    FOR EACH ROW EXECUTE FUNCTION points_refuse_change();
CREATE TRIGGER points_allocation_append_only BEFORE UPDATE OR DELETE ON points_pointsallocation
    FOR EACH ROW EXECUTE FUNCTION points_refuse_change();
"""

REVERSE = """
DROP TRIGGER IF EXISTS points_entry_append_only ON points_pointsentry;
DROP TRIGGER IF EXISTS points_entry_no_truncate ON points_pointsentry;
DROP TRIGGER IF EXISTS points_allocation_append_only ON points_pointsallocation;
DROP TRIGGER IF EXISTS points_allocation_no_truncate ON points_pointsallocation;
DROP FUNCTION IF EXISTS points_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("points", "0001_initial")]

    operations = [migrations.RunSQL(FUNCTION + TRIGGERS, REVERSE)]
