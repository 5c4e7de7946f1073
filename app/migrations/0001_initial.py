from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Activity',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('event', fields.CharField(max_length=64)),
                ('job_id', fields.CharField(null=True, max_length=64)),
                ('actor', fields.CharField(max_length=100)),
                ('details', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'activity', 'app': 'models', 'indexes': [Index(fields=['job_id', 'id']), Index(fields=['event', 'id'])], 'pk_attr': 'id', 'table_description': 'An audit entry for a management operation (`jobs.update`, `jobs.trigger`, ...).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Game',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('external_id', fields.CharField(unique=True, max_length=100)),
                ('title', fields.CharField(max_length=300)),
                ('platform', fields.CharField(null=True, max_length=100)),
                ('release_year', fields.IntField(null=True)),
                ('data', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('synced_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'game', 'app': 'models', 'pk_attr': 'id', 'table_description': "A game's metadata, upserted by `metadata-sync` from the catalogue, keyed by the source's id."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Job',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('name', fields.CharField(max_length=200)),
                ('description', fields.TextField(default='', unique=False)),
                ('type', fields.CharField(max_length=100)),
                ('payload', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('schedule', fields.CharField(max_length=200)),
                ('timezone', fields.CharField(null=True, max_length=64)),
                ('timeout_seconds', fields.FloatField(null=True)),
                ('builtin', fields.BooleanField(default=False)),
                ('enabled', fields.BooleanField(default=True)),
                ('next_run_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('last_run_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('last_result', fields.CharField(null=True, max_length=16)),
                ('last_duration_ms', fields.IntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'job', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A registered job: its schedule and the outcome of its last run.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RefreshToken',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=64)),
                ('token_hash', fields.CharField(unique=True, max_length=128)),
                ('expires_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'refresh_token', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Run',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('job_id', fields.CharField(max_length=64)),
                ('token', fields.CharField(unique=True, max_length=64)),
                ('attempt', fields.IntField(default=1)),
                ('triggered_by', fields.CharField(max_length=100)),
                ('fire_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('started_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('duration_ms', fields.IntField(null=True)),
                ('result', fields.CharField(null=True, max_length=16)),
                ('details', fields.TextField(null=True, unique=False)),
            ],
            options={'table': 'job_run', 'app': 'models', 'unique_together': (('job_id', 'fire_at'),), 'indexes': [Index(fields=['job_id', 'id']), Index(fields=['completed_at', 'id'])], 'pk_attr': 'id', 'table_description': "One execution of a job: the spec's log entry."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='StoredFile',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('path', fields.CharField(unique=True, max_length=500)),
                ('game_id', fields.BigIntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'stored_file', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A file under FILES_DIR that something still references. Anything else there is an orphan.'},
            bases=['Model'],
        ),
    ]
