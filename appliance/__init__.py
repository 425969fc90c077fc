"""The store box's server: store, event log, counting domain, auth and the HTTP API."""

__version__ = "0.1.0"
