from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Listing',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('title', fields.CharField(max_length=300)),
                ('description', fields.TextField(default='', unique=False)),
                ('price', fields.IntField(null=True)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'listing', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A listing in the marketplace. `cleanup_expired_listings` deletes old ones by created_at.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Notification',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('recipient', fields.CharField(max_length=320)),
                ('subject', fields.CharField(max_length=300)),
                ('body', fields.TextField(unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('sent_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('attempts', fields.IntField(default=0)),
            ],
            options={'table': 'notification', 'app': 'models', 'indexes': [Index(fields=['sent_at', 'id'])], 'pk_attr': 'id', 'table_description': 'An outbox message: pending while sent_at is null. `send_notifications` delivers it.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='SearchIndexEntry',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('listing_id', fields.BigIntField(unique=True)),
                ('title', fields.CharField(max_length=300)),
                ('body', fields.TextField(unique=False)),
                ('indexed_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'search_index_entry', 'app': 'models', 'pk_attr': 'id', 'table_description': 'The searchable text of one listing, maintained by `update_search_index`.'},
            bases=['Model'],
        ),
    ]
