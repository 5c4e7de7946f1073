"""tortoise-orm 1.1.9: database clients that stay usable when a transaction is cancelled as it begins (sqlite,
asyncpg; named so that tortoise's migrations pick the right schema editor), and model instances built from rows
(rows). Pinned by tests/adapters/test_tortoise_contract.py."""
