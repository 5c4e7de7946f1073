import re
from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from app.platform.db_fields import DatetimeField
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import UniqueConstraint


# A run's retries share its (job, fire) and differ by attempt, so job_run's unique key gains `attempt`. PostgreSQL
# swaps the constraint in place. SQLite cannot drop a table constraint: there the table is rebuilt with the new
# one (same columns, rows and ids), and what went with the old table comes back: its indexes, its id sequence and
# the run-count triggers of migration 0003, whose counters the copy leaves untouched (it inserts into the new
# table, which has no triggers yet). Rolled back, the old key comes back the same way; a database that already
# holds retries (two attempts of one fire) refuses the old key, and the rollback stops with nothing changed.
_OLD_KEY = ("job_id", "fire_at")
_NEW_KEY = ("job_id", "fire_at", "attempt")


def _sqlite(schema_editor) -> bool:
    return schema_editor.client.capabilities.dialect == "sqlite"


def _columns(key) -> str:
    return ", ".join(f'"{c}"' for c in key)


async def _rebuild_sqlite_job_run(schema_editor, model, old_key, new_key) -> None:
    client = schema_editor.client
    rows = await client.execute_query_dict("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'job_run'")
    table_sql = rows[0]["sql"]
    old = re.search(r'CONSTRAINT "([^"]+)" UNIQUE \(' + re.escape(_columns(old_key)) + r"\)", table_sql)
    if old is None:
        raise RuntimeError(f"job_run does not have the unique key this migration replaces: {table_sql}")
    name = schema_editor._get_unique_constraint_name(model, list(new_key))
    columns = _columns(new_key)
    new_sql = table_sql.replace(old.group(0), f'CONSTRAINT "{name}" UNIQUE ({columns})', 1)
    new_sql = new_sql.replace('CREATE TABLE "job_run"', 'CREATE TABLE "job_run_rebuilt"', 1)
    indexes = await client.execute_query_dict(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job_run' AND sql IS NOT NULL"
    )
    triggers = await client.execute_query_dict(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'job_run'"
    )
    sequence = await client.execute_query_dict("SELECT seq FROM sqlite_sequence WHERE name = 'job_run'")
    await client.execute_query(new_sql)
    await client.execute_query('INSERT INTO "job_run_rebuilt" SELECT * FROM "job_run"')
    await client.execute_query('DROP TABLE "job_run"')
    await client.execute_query('ALTER TABLE "job_run_rebuilt" RENAME TO "job_run"')
    for row in [*indexes, *triggers]:
        await client.execute_query(row["sql"])
    if sequence:
        await client.execute_query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'job_run'", [sequence[0]["seq"]])


class _DropRunKey(ops.RemoveConstraint):
    async def database_forward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and _sqlite(state_editor):
            return  # _AddRunKey's rebuild replaces it
        await super().database_forward(app_label, old_state, new_state, state_editor)

    async def database_backward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and _sqlite(state_editor):
            return  # _AddRunKey's rebuild put it back
        await super().database_backward(app_label, old_state, new_state, state_editor)


class _AddRunKey(ops.AddConstraint):
    async def database_forward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and _sqlite(state_editor):
            model = new_state.apps.get_model(f"{app_label}.{self.model_name}")
            await _rebuild_sqlite_job_run(state_editor, model, _OLD_KEY, _NEW_KEY)
            return
        await super().database_forward(app_label, old_state, new_state, state_editor)

    async def database_backward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and _sqlite(state_editor):
            model = old_state.apps.get_model(f"{app_label}.{self.model_name}")
            await _rebuild_sqlite_job_run(state_editor, model, _NEW_KEY, _OLD_KEY)
            return
        await super().database_backward(app_label, old_state, new_state, state_editor)


class Migration(migrations.Migration):
    dependencies = [('models', '0003_run_counts')]

    initial = False

    operations = [
        ops.CreateModel(
            name='SkippedFire',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('job_id', fields.CharField(max_length=64)),
                ('fire_at', DatetimeField(auto_now=False, auto_now_add=False)),
                ('last_fire_at', DatetimeField(auto_now=False, auto_now_add=False)),
                ('count', fields.IntField(default=1)),
                ('reason', fields.CharField(max_length=32)),
                ('recorded_at', DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'skipped_fire', 'app': 'models', 'unique_together': (('job_id', 'fire_at'),), 'indexes': [Index(fields=['job_id', 'id']), Index(fields=['recorded_at', 'id'])], 'pk_attr': 'id', 'table_description': 'A scheduled fire, or a range of missed ones, that did not run, and why.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Job',
            name='catch_up_policy',
            field=fields.CharField(default='latest', db_default='latest', max_length=16),
        ),
        ops.AddField(
            model_name='Job',
            name='catch_up_window_seconds',
            field=fields.FloatField(null=True),
        ),
        ops.AddField(
            model_name='Job',
            name='consecutive_failures',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Job',
            name='last_skip_reason',
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name='Job',
            name='last_skipped_at',
            field=DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Job',
            name='overlap',
            field=fields.CharField(default='skip', db_default='skip', max_length=16),
        ),
        ops.AddField(
            model_name='Job',
            name='pause_after_failures',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Job',
            name='retry',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
        _DropRunKey(
            model_name='Run',
            name=None,
            fields=['job_id', 'fire_at'],
        ),
        _AddRunKey(
            model_name='Run',
            constraint=UniqueConstraint(fields=('job_id', 'fire_at', 'attempt'), name=None),
        ),
    ]
