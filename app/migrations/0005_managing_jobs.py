# Managing jobs: a job's version (ETag, expectedVersion), the payload each run was given, and where each audit
# entry came from. Every column is nullable or has a database default, so existing rows need no rewrite.
from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index


_TABLES = {"Activity": "activity", "Job": "job", "Run": "job_run"}


class _AddColumn(ops.AddField):
    # Rolled back on SQLite, tortoise rebuilds the table from the model, which loses what the model does not say:
    # job_run's (job_id, fire_at, attempt) key as migration 0004 named it and the run-count triggers of 0003.
    # SQLite (3.35 and later) drops a plain column in place.
    async def database_backward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and state_editor.client.capabilities.dialect == "sqlite":
            table = _TABLES[self.model_name]
            await state_editor.client.execute_query(f'ALTER TABLE "{table}" DROP COLUMN "{self.name}"')
            return
        await super().database_backward(app_label, old_state, new_state, state_editor)

class Migration(migrations.Migration):
    dependencies = [('models', '0004_run_lifecycle')]

    initial = False

    operations = [
        _AddColumn(
            model_name='Activity',
            name='client_address',
            field=fields.CharField(null=True, max_length=64),
        ),
        _AddColumn(
            model_name='Activity',
            name='request_id',
            field=fields.CharField(null=True, max_length=128),
        ),
        ops.AddIndex(
            model_name='Activity',
            index=Index(fields=['actor', 'id']),
        ),
        _AddColumn(
            model_name='Job',
            name='version',
            field=fields.IntField(default=1, db_default=1),
        ),
        _AddColumn(
            model_name='Run',
            name='payload',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
    ]
