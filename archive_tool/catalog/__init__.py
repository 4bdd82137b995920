"""What is archived and where: the SQLite catalog (catalog: rows, find, rebuild) and the
per-subtree report of what a sweep would do (report)."""
