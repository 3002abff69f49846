"""Settings: every preset field, its type, range, default, and whether it is load-time or live."""
