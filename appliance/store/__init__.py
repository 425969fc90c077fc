"""The box's storage: SQLite and its migrations, the signed event log, the live bus, the node's identity."""
