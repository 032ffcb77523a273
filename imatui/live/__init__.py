"""Following a file that a collector is writing; no Textual (the app wraps it in a worker)."""

from imatui.live.follow import (
    Deleted,
    Failed,
    FollowEvent,
    Loaded,
    SnapshotAdded,
    Waiting,
    Writing,
    follow,
    list_snapshots,
    try_load,
)

__all__ = ["Deleted", "Failed", "FollowEvent", "Loaded", "SnapshotAdded", "Waiting", "Writing", "follow",
           "list_snapshots", "try_load"]
