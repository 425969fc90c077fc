"""Who may do what: people and their passwords and tokens, roles and permissions, paired devices."""
