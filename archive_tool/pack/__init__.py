"""Packs: many small sessions in one seekable zstd file (packfile), its seek table
(seekable), reading a damaged pack (packsalvage) and restoring sessions out of one (restore)."""
