"""The audit log: who did what to what, when, from the API or the CLI."""
