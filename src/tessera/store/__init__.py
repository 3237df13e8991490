"""The store: database engine, schema, migrations, and the tables the gateway writes.

SQLite in the data directory by default; the same code on PostgreSQL when several
gateway replicas share one database. Every driver error leaves this package as a
:class:`StoreError`.
"""

from tessera.store.accounts import AccountRecord, AccountStore
from tessera.store.api_keys import ApiKeyRecord, ApiKeyStore, generate_api_key, hash_api_key
from tessera.store.engine import create_engine, database_url_for, normalise_database_url
from tessera.store.errors import StoreError
from tessera.store.ledger import LedgerStore
from tessera.store.migrate import upgrade_to_head
from tessera.store.providers import ProviderRecord, ProviderStore
from tessera.store.requests_log import RequestLog, RequestLogWriter, RequestRecord

__all__ = [
    "AccountRecord",
    "AccountStore",
    "ApiKeyRecord",
    "ApiKeyStore",
    "LedgerStore",
    "ProviderRecord",
    "ProviderStore",
    "RequestLog",
    "RequestLogWriter",
    "RequestRecord",
    "StoreError",
    "create_engine",
    "database_url_for",
    "generate_api_key",
    "hash_api_key",
    "normalise_database_url",
    "upgrade_to_head",
]
