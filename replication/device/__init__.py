"""The handheld client: its outbox, the background sender, the HTTP transport, payload checks and its command line."""
