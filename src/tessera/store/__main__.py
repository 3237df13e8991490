"""``python -m tessera.store``: apply or autogenerate migrations (see ``migrate.main``)."""

from tessera.store.migrate import main

main()
