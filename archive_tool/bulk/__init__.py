"""Many sessions: discover, plan, drive a worker pool, account; bulk restore, prune, stale runs."""
