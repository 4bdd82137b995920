"""Packs: many small sessions in one seekable zstd file (packfile), its seek table
(seekable), reading a damaged pack (packsalvage), restoring sessions out of one (restore),
and writing one pack that spans dirs for ``sweep --pack auto`` (packspan: sweep/packwork's
steps below the pack's dir fd; here because sweep/ holds its twelve modules)."""
