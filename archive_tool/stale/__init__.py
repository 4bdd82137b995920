"""RUNNING runs whose process is gone: the rule for one run (staleness) and the walk that
finalizes them into FINISHED_ERROR/ (finalize)."""
