"""One session or one archive at a time: scan, tar, compress, commit, read, restore."""
