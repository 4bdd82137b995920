"""Bring archives back into session dirs, many at a time: flat and --tree (many), --undo of
a run (undo), sessions held in packs (packrestore); and verify ROOT (verifytree). One
archive: engine/restore.py; one session of a pack: pack/restore.py."""
