"""The SQLite lease store (`store.SQLiteStore`): one database file per node, `<dataDir>/leases.db`.

schema.py: the files, tables and migrations; recovery.py: a damaged database detected, moved aside
and rebuilt from the cache; store.py: the store. Imported only when a config's `store` is "sqlite"
(see `multiplex.ipam.registry.STORES`)."""
