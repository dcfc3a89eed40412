"""The SQLite lease store (`store.SQLiteStore`): one database file per node, `<dataDir>/leases.db`.
Imported only when a config's `store` is "sqlite" (see `multiplex.ipam.store.STORES`)."""
