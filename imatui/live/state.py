"""The live state of a followed file, told truthfully (no Textual: the app shows `header_text`).

- waiting: the file does not exist yet; writing…: it is empty, short or changing;
- idle: followed, and no new version since it was opened;
- live: new versions keep coming (the last one within a few times the usual interval);
- stalled: it was live, but no new version came for STALL_FACTOR times the usual interval
  (at least STALL_MIN_S): a collector that hangs or died without a word;
- finished: the last version says the collection is complete (imatui collect writes
  `imatui.collect.finished = true` on its final save; llama-imatrix writes nothing of the kind, so its
  runs end as stalled);
- deleted, unreadable: what they say.
The age of the last write (the file's mtime) is always part of the header once a version was read.
"""

from __future__ import annotations

import statistics
import time
from enum import Enum
from pathlib import Path

from imatui.stats.convergence import ConvergenceSeries, format_rate

STALL_FACTOR = 4.0
STALL_MIN_S = 15.0
INTERVALS = 8  # the usual interval is the median of this many last ones


def age_text(seconds: float) -> str:
    """"12s", "45m", "3h12m", "2d4h": seconds only while they matter, so that an old file's header
    changes once a minute, not every second."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


class LiveState(Enum):
    OPENING = ""
    WAITING = "waiting"
    WRITING = "writing…"
    IDLE = "idle"
    LIVE = "live"
    STALLED = "stalled"
    FINISHED = "finished"
    DELETED = "file deleted — showing last data"
    UNREADABLE = "unreadable"

    def label(self, path: str | Path | None = None) -> str:
        if self is LiveState.WAITING:
            return f"waiting for {Path(path).name}" if path else "waiting"
        return self.value


class LiveClock:
    """The state machine: `loaded()` for each version read, `update()` as time passes."""

    def __init__(self) -> None:
        self.state = LiveState.OPENING
        self.writes: list[float] = []  # the file's mtime (time.time() clock) of each version read

    def loaded(self, mtime: float, finished: bool, changed: bool) -> None:
        """A complete version was read; `changed`: it is a new one (not the file as first found)."""
        if not self.writes or mtime != self.writes[-1]:
            self.writes.append(mtime)
            del self.writes[:-INTERVALS - 1]
        if finished:
            self.state = LiveState.FINISHED
        elif changed:
            self.state = LiveState.LIVE
        elif self.state in (LiveState.OPENING, LiveState.WAITING, LiveState.WRITING, LiveState.UNREADABLE):
            self.state = LiveState.IDLE

    def usual_interval(self) -> float | None:
        gaps = [b - a for a, b in zip(self.writes, self.writes[1:]) if b > a]
        return statistics.median(gaps) if gaps else None

    def stall_after(self) -> float:
        interval = self.usual_interval()
        return max(STALL_MIN_S, STALL_FACTOR * interval) if interval is not None else STALL_MIN_S

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last write of a version that was read."""
        if not self.writes:
            return None
        return max(0.0, (time.time() if now is None else now) - self.writes[-1])

    def update(self, now: float | None = None) -> LiveState:
        age = self.age(now)
        if self.state is LiveState.LIVE and age is not None and age > self.stall_after():
            self.state = LiveState.STALLED
        return self.state

    def header_text(self, path: str | Path | None, series: ConvergenceSeries | None = None,
                    now: float | None = None) -> str:
        """"live · 5.0/min · written 12s ago"."""
        text = self.state.label(path)
        if self.state in (LiveState.LIVE, LiveState.WRITING, LiveState.STALLED) and series is not None:
            rate = series.chunks_per_minute() if series.last is not None else None
            if rate is not None:
                text += f" · {format_rate(rate)}"
        age = self.age(now)
        if age is not None and self.state not in (LiveState.OPENING, LiveState.WAITING):
            text += f" · written {age_text(age)} ago"
        return text
