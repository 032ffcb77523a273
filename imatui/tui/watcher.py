"""Live monitoring: the app follows its open file while a collector rewrites it.

The follower (imatui.live.follow, no Textual) says what happened to the file; this module runs it
in an async worker of the app (group "watch", exclusive: opening another file replaces it), computes
the statistics of each complete version in a thread and posts the same DataLoaded / LoadFailed
messages as the app's own loader, so a reload goes through the code path of opening a file and
keeps the cursor, sort, filter and selection. It also keeps the convergence series (checkpoints from
reloads and from NAME.at_N snapshots) and the header's live marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from imatui.errors import ImatrixError, TruncatedError
from imatui.live.follow import Deleted, Failed, Loaded, SnapshotAdded, Waiting, Writing, follow, try_load
from imatui.stats.convergence import (
    Checkpoint,
    ConvergenceSeries,
    Step,
    channel_means,
    format_duration,
    format_rate,
)
from imatui.stats.experts import routing_counts
from imatui.tui.messages import DataLoaded, LoadFailed

if TYPE_CHECKING:
    from textual.app import App

    from imatui.imatrix import Imatrix

LIVE = "live"
IDLE = "idle"
WRITING = "writing…"
DELETED = "file deleted — showing last data"
SNAPSHOT_RETRIES = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)


def _lazy_stamp(imatrix: "Imatrix | None") -> tuple[int, int] | None:
    """(size, mtime_ns) of the file a lazily read Imatrix was parsed from, when the reader kept it."""
    if imatrix is None or not imatrix.entries:
        return None
    loader = next(iter(imatrix.entries.values()))._sums2
    stamp = getattr(loader, "stamp", None)
    return tuple(stamp) if callable(loader) and stamp is not None else None  # type: ignore[return-value]


def waiting_for(path: str | Path) -> str:
    return f"waiting for {Path(path).name}"


class LiveWatcher:
    """Follows one file for an app that has `chunk_size`, `set_live_status(text)` and `notify`.

    `status` is the marker ("live", "writing…", "waiting for FILE", "file deleted — showing last
    data"); `header_text()` adds the growth (chunks per minute, time since the last checkpoint).
    """

    def __init__(self, app: "App", *, on_change: Callable[[], None] | None = None) -> None:
        self.app = app
        self.path: str | None = None
        self.status = ""
        self.series = ConvergenceSeries()
        self.snapshots: dict[Path, int] = {}
        self.loaded_at: float | None = None  # time.monotonic() when the last complete version was posted
        self.last_latency: float | None = None  # change event -> DataLoaded posted, seconds
        self.on_change = on_change  # called when the series or the snapshot list changed
        self._timer = None
        self._shown_stamp: tuple[int, int] | None = None
        self._known_failure: str | None = None

    # -- starting ---------------------------------------------------------------------------------
    def follow(self, path: str | Path, shown: "Imatrix | None" = None,
               stamp: tuple[int, int] | None = None, failed: str | None = None) -> None:
        """Follow `path` (replacing any file followed before); a no-op for the file already followed.

        `shown`: the Imatrix the app already shows for it; when the follower's first version is that
        very file (same size and mtime) of a large, lazily read file, its statistics are not computed
        a second time. `stamp`: (size, mtime_ns) of the bytes `shown` was read from, when known.
        `failed`: the error the app has already shown for this file (not posted a second time when
        the follower finds the same).
        """
        path = str(path)
        if path == self.path:
            return
        if self.path is not None and Path(path).resolve() != Path(self.path).resolve():
            self.series = ConvergenceSeries()
            self.snapshots = {}
        self.path = path
        self._known_failure = failed
        self._shown_stamp = (stamp if shown is not None else None) or _lazy_stamp(shown)
        if shown is not None and self._shown_stamp is None:
            # an eagerly read file (legacy .dat) keeps no stamp: the app has just read it, take it now
            try:
                st = os.stat(path)
                self._shown_stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        self.app.run_worker(self._run(path), name=f"watch {path}", group="watch", exclusive=True,
                            exit_on_error=False)
        if self._timer is None:
            # the "12s ago" in the header; one repaint a second, nothing while the app is idle otherwise
            self._timer = self.app.set_interval(1.0, self._refresh_header)
            series = list(getattr(self.app, "series", []) or [])
            if len(series) > 1:  # several snapshot files on the command line
                self.load_series(series)

    def load_series(self, paths: Sequence[str | Path]) -> None:
        """Snapshot files named on the command line: their convergence, without a running collector."""
        self.app.run_worker(self._load_series([Path(p) for p in paths]), name="snapshot series",
                            group="series", exit_on_error=False)

    # -- the worker ----------------------------------------------------------------------------------
    async def _run(self, path: str) -> None:
        from imatui.stats.tensor import compute_stats

        started = True  # snapshots listed before the file's first state existed before we started
        first_load = True  # the file as found, not a new checkpoint: no convergence notification
        async with contextlib.aclosing(follow(path, chunk_size=getattr(self.app, "chunk_size", 512))) as events:
            async for event in events:
                if path != self.path:
                    return
                if isinstance(event, Loaded):
                    started = False
                    self._known_failure = None
                    if self._shown_stamp is not None and event.stamp[:2] == self._shown_stamp:
                        # the app has just computed these very numbers from these very bytes: keep them,
                        # only swap in the follower's copy (an eager one, unless the file is large),
                        # so the detail pane can still read channels while a writer rewrites the file
                        self._shown_stamp = None
                        first_load = False
                        if getattr(self.app, "shown_path", path) == path and not event.lazy:
                            self.app.imatrix = event.imatrix  # type: ignore[attr-defined]
                        await self._add_checkpoint(event)
                        self.loaded_at = time.monotonic()
                        self._set_status(IDLE)  # followed; no change seen yet
                        self._changed()
                        continue
                    self._shown_stamp = None
                    try:
                        # another file opened meanwhile: the pass stops between tensors
                        report = await asyncio.to_thread(compute_stats, event.imatrix,
                                                         cancelled=lambda: path != self.path)
                    except InterruptedError:
                        return
                    except TruncatedError:
                        self._set_status(WRITING)  # a lazy (large) file rewritten under the statistics pass
                        continue
                    except ImatrixError as exc:
                        self.app.post_message(LoadFailed(path, str(exc)))
                        continue
                    if path != self.path:
                        return
                    self.app.post_message(DataLoaded(path, event.imatrix, report))
                    self.loaded_at = time.monotonic()
                    if event.changed_at is not None:
                        self.last_latency = self.loaded_at - event.changed_at
                    # convergence after the table's data went out: it is not on the latency path
                    try:
                        step = await self._add_checkpoint(event)
                    except ImatrixError:
                        step = None
                    if path != self.path:
                        return  # a large lazy file rewritten again meanwhile: the next version will do
                    self._set_status(LIVE)
                    if step is not None and not first_load:
                        self._notify_step(step)
                    first_load = False
                    self._changed()
                elif isinstance(event, Writing):
                    started = False
                    self._set_status(WRITING)
                elif isinstance(event, Waiting):
                    started = False
                    self._set_status(waiting_for(path))
                elif isinstance(event, Deleted):
                    self._set_status(DELETED)
                    self.app.notify(f"{path} was deleted; showing the last data", title="live",
                                    severity="warning", timeout=6)
                elif isinstance(event, SnapshotAdded):
                    self.snapshots[event.path] = event.chunks
                    if not started:
                        self.app.notify(f"new snapshot {event.path.name} ({event.chunks} chunks)",
                                        title="live", timeout=4)
                    self.app.run_worker(self._add_snapshot(event.path, self.series), group="snapshots",
                                        exit_on_error=False)
                    self._changed()
                elif isinstance(event, Failed):
                    started = False
                    self._set_status("unreadable")
                    if event.message != self._known_failure:
                        self.app.post_message(LoadFailed(path, event.message))

    async def _add_checkpoint(self, event: Loaded) -> Step | None:
        # the means in a thread; the series itself only ever changes on the event loop (snapshot
        # workers insert into it too)
        series = self.series
        means = await asyncio.to_thread(channel_means, event.imatrix)
        if series is not self.series:
            return None  # another file followed meanwhile: its own series
        return series.add_checkpoint(
            Checkpoint(int(event.imatrix.chunk_count), event.mtime, means, event.path.name,
                       routing_counts(event.imatrix)))  # MoE: the steps name the slowest experts

    async def _add_snapshot(self, snap: Path, series: ConvergenceSeries) -> None:
        """A snapshot is often noticed while llama-imatrix is still writing it: try a few times.

        The series is the one of the file followed when the snapshot was noticed: if another file is
        opened meanwhile (follow() starts a new series), the result is dropped. The caller passes the
        series: a worker starts on a later turn of the event loop, after such a follow() perhaps.
        """
        for delay in SNAPSHOT_RETRIES:
            await asyncio.sleep(delay)
            if series is not self.series:
                return
            outcome = await asyncio.to_thread(try_load, snap, getattr(self.app, "chunk_size", 512))
            if outcome.kind in ("loaded", "lazy") and outcome.imatrix is not None:
                means = await asyncio.to_thread(channel_means, outcome.imatrix)
                if series is not self.series:
                    return
                checkpoint = Checkpoint(outcome.imatrix.chunk_count, outcome.mtime, means, snap.name,
                                        routing_counts(outcome.imatrix))
                if series.insert_checkpoint(checkpoint):
                    self._changed()
                return
            if outcome.kind == "missing":
                return  # "invalid" may be a header still half-written: the retries decide

    async def _load_series(self, paths: list[Path]) -> None:
        series = self.series
        for path in paths:
            await self._add_snapshot(path, series)

    # -- header -------------------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        self.status = status
        self._refresh_header()

    def header_text(self, now: float | None = None) -> str:
        """The live marker plus growth: "live · 5.0/min · last checkpoint 12s ago"."""
        text = self.status
        if self.status in (LIVE, WRITING) and self.series.last is not None:
            rate = self.series.chunks_per_minute()
            ago = self.series.since_last(now)
            if rate is not None:
                text += f" · {format_rate(rate)}"
            if ago is not None:
                text += f" · {format_duration(ago)} ago"
        return text

    def stop(self) -> None:
        """Stop the header's timer (the app is shutting down)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _refresh_header(self) -> None:
        # the timer can tick while Textual's shutdown has already emptied the screen stack
        if not self.app.is_running or not self.app.screen_stack:
            return
        if self.status:
            self.app.set_live_status(self.header_text())  # type: ignore[attr-defined]
        if self.status == LIVE or self.status == WRITING:
            from imatui.tui.screens.convergence import ConvergenceScreen

            if isinstance(self.app.screen, ConvergenceScreen):
                self.app.screen.refresh_title()

    def _notify_step(self, step: Step) -> None:
        if step.min is None or step.median is None:
            return
        self.app.notify(
            f"{step.from_chunks}→{step.to_chunks} chunks: min cos {step.min:.4f} ({step.min_tensor}), "
            f"median {step.median:.5f} · c: convergence screen",
            title="convergence", timeout=4)

    def _changed(self) -> None:
        from imatui.tui.screens.convergence import ConvergenceScreen

        for screen in self.app.screen_stack:
            if isinstance(screen, ConvergenceScreen):
                screen.refresh_series()
        if self.on_change is not None:
            self.on_change()
