"""Archive many sessions: find them (discover), choose (plan), run a worker pool (executors),
the per-session step both layouts share (step), one archive per session (sessions) or
packs (packplan, packsweep, packwork, packspan), and the manifest of a run (runlog)."""
