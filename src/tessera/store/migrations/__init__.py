"""Alembic migrations for the store, shipped in the package and run by ``tessera.store.migrate``."""
