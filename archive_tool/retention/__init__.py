"""Retention: delete old archives (prune) and rewrite packs (repack, repackplan); prune's
candidates inside packs (prunepacks)."""
