"""What guards a tree from other processes and users: the root lock (lock), whether a
writer is still alive (liveness), open-writer holds (holds), input another user controls
(untrusted) and the signals that end a run cleanly (interrupt)."""
