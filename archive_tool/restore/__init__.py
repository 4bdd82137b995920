"""Bring archives back into session dirs, many at a time: flat, --tree, --undo of a run
(many), and sessions held in packs (packrestore). One archive: engine/restore.py."""
