from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

# Each log page's `total` reads these counters instead of counting job_run. Triggers keep them exact on
# every insert and delete, whoever writes (the application, the cleanup job, a manual DELETE).
SQLITE = [
    """CREATE TRIGGER job_run_counted AFTER INSERT ON job_run BEGIN
        INSERT INTO job_run_count (job_id, runs) VALUES (NEW.job_id, 1)
        ON CONFLICT (job_id) DO UPDATE SET runs = runs + 1;
    END""",
    """CREATE TRIGGER job_run_uncounted AFTER DELETE ON job_run BEGIN
        UPDATE job_run_count SET runs = runs - 1 WHERE job_id = OLD.job_id;
    END""",
]
# Statement-level with transition tables: a bulk delete of a million runs updates each job's counter once.
POSTGRES = [
    """CREATE FUNCTION job_run_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO job_run_count (job_id, runs)
        SELECT job_id, COUNT(*) FROM added GROUP BY job_id ORDER BY job_id
        ON CONFLICT (job_id) DO UPDATE SET runs = job_run_count.runs + EXCLUDED.runs;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION job_run_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE job_run_count AS c SET runs = c.runs - d.n
        FROM (SELECT job_id, COUNT(*) AS n FROM removed GROUP BY job_id) AS d
        WHERE c.job_id = d.job_id;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER job_run_counted AFTER INSERT ON job_run REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION job_run_count_added()""",
    """CREATE TRIGGER job_run_uncounted AFTER DELETE ON job_run REFERENCING OLD TABLE AS removed
        FOR EACH STATEMENT EXECUTE FUNCTION job_run_count_removed()""",
]
BACKFILL = "INSERT INTO job_run_count (job_id, runs) SELECT job_id, COUNT(*) FROM job_run GROUP BY job_id"


async def _run_each(schema_editor, statements) -> None:
    # One statement at a time: trigger bodies hold `;`, which the SQLite editor's splitter would cut.
    client = schema_editor.client
    for sql in statements:
        if client.capabilities.dialect == "sqlite":
            await client.execute_query(sql)
        else:
            await client.execute_script(sql)


async def create_triggers(apps, schema_editor) -> None:
    sqlite = schema_editor.client.capabilities.dialect == "sqlite"
    await _run_each(schema_editor, [*(SQLITE if sqlite else POSTGRES), BACKFILL])


async def drop_triggers(apps, schema_editor) -> None:
    if schema_editor.client.capabilities.dialect == "sqlite":
        drops = ["DROP TRIGGER IF EXISTS job_run_counted", "DROP TRIGGER IF EXISTS job_run_uncounted"]
    else:
        drops = [
            "DROP TRIGGER IF EXISTS job_run_counted ON job_run",
            "DROP TRIGGER IF EXISTS job_run_uncounted ON job_run",
            "DROP FUNCTION IF EXISTS job_run_count_added()",
            "DROP FUNCTION IF EXISTS job_run_count_removed()",
        ]
    await _run_each(schema_editor, drops)


class Migration(migrations.Migration):
    dependencies = [('models', '0002_job_type_tables')]

    initial = False

    operations = [
        ops.CreateModel(
            name='RunCount',
            fields=[
                ('job_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('runs', fields.BigIntField(default=0)),
            ],
            options={'table': 'job_run_count', 'app': 'models', 'pk_attr': 'job_id', 'table_description': 'How many runs a job has, kept exact by triggers on job_run (migration 0003).'},
            bases=['Model'],
        ),
        ops.RunPython(create_triggers, drop_triggers),
    ]
