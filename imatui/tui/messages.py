"""Messages that workers post to the app (toolong's pattern: small dataclasses).

The load worker (app.py) and the file watcher (watcher.py) post the same two messages, so a reload
while following a file goes through exactly the code path of opening it.
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
class ChannelsUnavailable(Message):
    """The selected tensor's channels could not be read: its (large, lazily read) file is being
    rewritten; the watcher's reload selects it again."""

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
