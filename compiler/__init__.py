"""The tuning loop, builds, the tuning database, kernel export and the `tune` CLI."""
