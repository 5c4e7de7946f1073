# What a run said and did: its log lines (run_log), and on job_run the handler's output, its last progress report,
# and a failed run's exception type and traceback. New nullable columns: existing rows need no rewrite.
from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from app.platform.db_fields import DatetimeField
from json import dumps, loads
from tortoise import fields


class _AddColumn(ops.AddField):
    # Rolled back on SQLite, tortoise rebuilds the table from the model, which loses what the model does not say
    # (job_run's key as migration 0004 named it, the run-count triggers of 0003): SQLite drops a column in place.
    async def database_backward(self, app_label, old_state, new_state, state_editor=None) -> None:
        if state_editor is not None and state_editor.client.capabilities.dialect == "sqlite":
            await state_editor.client.execute_query(f'ALTER TABLE "job_run" DROP COLUMN "{self.name}"')
            return
        await super().database_backward(app_label, old_state, new_state, state_editor)


class Migration(migrations.Migration):
    dependencies = [('models', '0005_managing_jobs')]

    initial = False

    operations = [
        ops.CreateModel(
            name='RunLogLine',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run_id', fields.BigIntField()),
                ('seq', fields.IntField()),
                ('at', DatetimeField(auto_now=False, auto_now_add=False)),
                ('level', fields.CharField(max_length=8)),
                ('message', fields.TextField(unique=False)),
                ('extra', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
            ],
            options={'table': 'run_log', 'app': 'models', 'unique_together': (('run_id', 'seq'),), 'pk_attr': 'id', 'table_description': "One line a run's handler logged (`ctx.log`), numbered from 1 within its run by `seq`."},
            bases=['Model'],
        ),
        _AddColumn(
            model_name='Run',
            name='error_type',
            field=fields.CharField(null=True, max_length=200),
        ),
        _AddColumn(
            model_name='Run',
            name='output',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
        _AddColumn(
            model_name='Run',
            name='progress',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
        _AddColumn(
            model_name='Run',
            name='traceback',
            field=fields.TextField(null=True, unique=False),
        ),
    ]
