"""Messages that the open file's owner (open_file.py) posts to the app, which routes them to the
screens (toolong's pattern: small dataclasses). Opening a file and reloading it when it changes
post the same DataLoaded, so a reload goes through exactly the code path of opening.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from textual.message import Message

from imatui.imatrix import Imatrix
from imatui.stats.tensor import StatsReport


@dataclass
class DataLoaded(Message):
    """A file was read and its statistics computed."""

    path: str
    imatrix: Imatrix
    report: StatsReport

    def can_replace(self, message: Message) -> bool:
        # a burst of reloads of one file: only the newest matters
        return isinstance(message, DataLoaded) and message.path == self.path


@dataclass
class LoadFailed(Message):
    """A file could not be read; `message` is the ImatrixError's one line ("PATH: problem")."""

    path: str
    message: str


@dataclass
class LoadWriting(Message):
    """The file is empty or half-written (a collector is rewriting it): not an error, follow it."""

    path: str


@dataclass
class FileWaiting(Message):
    """The file does not exist (yet): it opens when it appears."""

    path: str


@dataclass
class FileDeleted(Message):
    """The file on screen was deleted: the last data stays."""

    path: str


@dataclass
class LiveStateChanged(Message):
    """The header's live marker: "live · 5.0/min · written 12s ago", "stalled · …", "finished · …"."""

    path: str
    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LiveStateChanged)


@dataclass
class SeriesChanged(Message):
    """The convergence series or the snapshot list changed; `note` is worth a notification (a new
    snapshot noticed, a new checkpoint's step)."""

    path: str
    note: str | None = None


@dataclass
class ChannelsUnavailable(Message):
    """The selected tensor's channels could not be read: its (large, lazily read) file is being
    rewritten; the follower's reload selects it again."""

    path: str
    name: str


@dataclass
class LoadProgress(Message):
    """Statistics are being computed: `done` of `total` tensors (for the header)."""

    path: str
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LoadProgress) and message.path == self.path


@dataclass
class ChannelsReady(Message):
    """Per-channel values of one tensor, for the detail pane (computed off the UI thread)."""

    path: str
    name: str
    values: np.ndarray  # per-channel means sums2 / counts, flat over the matrices, float64
    counts: np.ndarray  # tokens per matrix (per expert for MoE)
    summary: object = None  # channel_plot.ChannelSummary: sorted, thinned, logs (computed in the worker)
