"""The one owner of the open file: first load, following, the snapshot series and the live state.

`OpenFile` is the only code that reads files for the main view. Everything it learns reaches the
screens as messages posted to its host (the App, which routes them): DataLoaded, LoadFailed,
LoadWriting, FileWaiting, FileDeleted, LoadProgress, LiveStateChanged, SeriesChanged, and the
detail pane's ChannelsReady / ChannelsUnavailable. It never touches a widget and never walks the
screen stack; a screen that wants every change of the series subscribes to `series_changed` (a
Textual Signal, posting's pattern).

One async worker (group "watch", exclusive: opening another file replaces it) iterates
imatui.live.follow: the follower's first state of the file *is* the first load, so opening and
reloading are one code path. Statistics run in a thread and stop between tensors when another file
is opened. Every exception, expected (ImatrixError) or not, ends as a LoadFailed naming the file,
and following goes on: a good file that lands later is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from textual.signal import Signal
from textual.worker import get_current_worker

from imatui.errors import ImatrixError, TruncatedError
from imatui.live.follow import Deleted, Failed, Loaded, SnapshotAdded, Waiting, Writing, follow, try_load
from imatui.live.series import snapshot_family
from imatui.live.state import LiveClock, LiveState
from imatui.stats.convergence import Checkpoint, ConvergenceSeries, Step, channel_means
from imatui.stats.experts import routing_counts
import imatui.stats.tensor as tensor_stats
from imatui.tui.messages import (
    ChannelsReady,
    ChannelsUnavailable,
    DataLoaded,
    FileDeleted,
    FileWaiting,
    LiveStateChanged,
    LoadFailed,
    LoadProgress,
    LoadWriting,
    SeriesChanged,
)
from imatui.tui.widgets.channel_plot import summarize_channels

if TYPE_CHECKING:
    from textual.app import App

    from imatui.imatrix import Imatrix
    from imatui.stats.tensor import StatsReport

SNAPSHOT_RETRIES = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)
RESTART_DELAY_S = 1.0  # after an unexpected error in the follower itself, follow again after this


def _bug(path: str, exc: BaseException) -> str:
    """The one line for an exception that is not an ImatrixError (a bug, but never a silent one)."""
    return f"{path}: {type(exc).__name__}: {exc}"


class OpenFile:
    """The file on screen and the file followed (they differ while a newly asked-for file has not
    loaded yet, or failed and the last good data stays on screen)."""

    def __init__(self, host: "App", *, chunk_size: int = 512) -> None:
        self.host = host
        self.chunk_size = chunk_size
        self.path: str | None = None  # the file followed (asked for)
        self.shown_path: str | None = None  # the file whose numbers are on screen
        self.imatrix: "Imatrix | None" = None
        self.report: "StatsReport | None" = None
        self.series = ConvergenceSeries()
        self.snapshots: dict[Path, int] = {}
        self.clock = LiveClock()
        self.busy = False  # a first load is under way (tests and screenshots wait for it)
        self.loaded_at: float | None = None  # time.monotonic() when the last version was posted
        self.last_latency: float | None = None  # change event -> DataLoaded posted, seconds
        self.series_changed: Signal[ConvergenceSeries] = Signal(host, "series-changed")
        self._shown_stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the bytes on screen
        self._timer = None
        self._header = ""

    # -- what the screens read ------------------------------------------------------------------
    @property
    def status(self) -> str:
        """The live marker's words: "live", "idle", "stalled", "finished", "writing…", ..."""
        return self.clock.state.label(self.path)

    def header_text(self, now: float | None = None) -> str:
        """The marker plus growth and the age of the last write: "live · 5.0/min · written 12s ago"."""
        return self.clock.header_text(self.path, self.series, now)

    # -- opening ----------------------------------------------------------------------------------
    def open(self, path: str | Path, *, series: Sequence[str | Path] = (), force: bool = False) -> None:
        """Show `path` (and follow it); a no-op for the file already followed unless `force` (read it
        again: the user asked for it).

        `series`: snapshot files named on the command line, loaded into the convergence series.
        Snapshots beside the file (NAME.at_N), or beside NAME when `path` is one of them, always are.
        """
        path = str(path)
        if path == self.path and not force:
            return
        same_file = self.path is not None and Path(path).resolve() == Path(self.path).resolve()
        if not same_file:
            self.series = ConvergenceSeries()
            self.snapshots = {}
            self.clock = LiveClock()
        self.path = path
        if path != self.shown_path:
            self.busy = True
        self.host.run_worker(self._follow(path), name=f"watch {path}", group="watch", exclusive=True,
                             exit_on_error=False)
        if self._timer is None:
            # the age in the header and the stalled state; one tick a second
            self._timer = self.host.set_interval(1.0, self._tick)
        main, siblings = snapshot_family(path)
        extra = [Path(p) for p in series] + siblings
        if main is not None and Path(path).resolve() != main.resolve():
            extra.append(main)  # a snapshot was opened: its collection's file is the newest checkpoint
        if extra:
            self.host.run_worker(self._load_series(extra, self.series), name="snapshot series", group="series",
                                 exit_on_error=False)

    def stop(self) -> None:
        """The app is shutting down: no more ticks."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    # -- the follower -----------------------------------------------------------------------------
    async def _follow(self, path: str) -> None:
        while path == self.path:
            try:
                async with contextlib.aclosing(follow(path, chunk_size=self.chunk_size)) as events:
                    async for event in events:
                        if path != self.path:
                            return
                        await self._event(path, event)
                return  # the follower ended (no folder, no watch): it said why in a Failed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - said on screen; following goes on
                self._failed(path, _bug(path, exc))
                await asyncio.sleep(RESTART_DELAY_S)

    async def _event(self, path: str, event: object) -> None:
        if isinstance(event, Loaded):
            await self._loaded(path, event)
        elif isinstance(event, Writing):
            self._set_state(LiveState.WRITING)
            self.busy = False
            self.host.post_message(LoadWriting(path))
        elif isinstance(event, Waiting):
            self._set_state(LiveState.WAITING)
            self.busy = False
            self.host.post_message(FileWaiting(path))
        elif isinstance(event, Deleted):
            self._set_state(LiveState.DELETED)
            self.host.post_message(FileDeleted(path))
        elif isinstance(event, SnapshotAdded):
            noticed_late = event.path not in self.snapshots and self.clock.state is not LiveState.OPENING
            self.snapshots[event.path] = event.chunks
            note = f"new snapshot {event.path.name} ({event.chunks} chunks)" if noticed_late else None
            self.host.run_worker(self._add_snapshot(event.path, self.series), group="snapshots",
                                 exit_on_error=False)
            self._series_changed(note)
        elif isinstance(event, Failed):
            self._set_state(LiveState.UNREADABLE)
            self._failed(path, event.message)

    async def _loaded(self, path: str, event: Loaded) -> None:
        stamp = event.stamp[:2]
        first = self.clock.state is LiveState.OPENING
        if path == self.shown_path and stamp == self._shown_stamp:
            # these very bytes are on screen (followed again after a failed open): nothing to compute
            self.clock.loaded(event.mtime, self._finished(event.imatrix), changed=False)
            self._set_state(self.clock.state)
            if self.imatrix is not None and self.report is not None:
                self.host.post_message(DataLoaded(path, self.imatrix, self.report))
            self.busy = False
            return
        self.busy = True
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.1:  # ten header updates a second are plenty
                last[0] = now
                self.host.post_message(LoadProgress(path, done, total))

        try:
            report = await asyncio.to_thread(tensor_stats.compute_stats, event.imatrix, progress=progress,
                                             cancelled=lambda: path != self.path)
        except InterruptedError:
            return
        except TruncatedError:
            self._set_state(LiveState.WRITING)  # a lazy (large) file rewritten under the statistics pass
            self.busy = False
            self.host.post_message(LoadWriting(path))
            return
        except Exception as exc:  # noqa: BLE001 - ImatrixError or a bug: said on screen, following goes on
            self._set_state(LiveState.UNREADABLE)
            self._failed(path, str(exc) if isinstance(exc, ImatrixError) else _bug(path, exc))
            return
        if path != self.path:
            return
        self.imatrix, self.report, self.shown_path, self._shown_stamp = event.imatrix, report, path, stamp
        self.clock.loaded(event.mtime, self._finished(event.imatrix), changed=not first)
        self.host.post_message(DataLoaded(path, event.imatrix, report))
        self.busy = False
        self.loaded_at = time.monotonic()
        if event.changed_at is not None:
            self.last_latency = self.loaded_at - event.changed_at
        self._set_state(self.clock.state)
        # convergence after the table's data went out: it is not on the latency path
        try:
            step = await self._add_checkpoint(event)
        except Exception:  # noqa: BLE001 - the series is an extra; the table is already right
            step = None
        if path == self.path:
            self._series_changed(self._step_note(step) if step is not None and not first else None)

    @staticmethod
    def _finished(imatrix: "Imatrix") -> bool:
        from imatui.formats.gguf import KEY_FINISHED

        return bool(imatrix.metadata.get(KEY_FINISHED))

    def _failed(self, path: str, message: str) -> None:
        self.busy = False
        self.host.post_message(LoadFailed(path, message))
        if path == self.path and self.shown_path is not None and self.shown_path != path:
            # a file opened over a good one failed: the good one stays on screen, and is followed again
            self.host.call_later(self.open, self.shown_path)

    # -- the snapshot series ---------------------------------------------------------------------
    async def _add_checkpoint(self, event: Loaded) -> Step | None:
        # the means in a thread; the series itself only ever changes on the event loop
        series = self.series
        means = await asyncio.to_thread(channel_means, event.imatrix)
        if series is not self.series:
            return None  # another file followed meanwhile: its own series
        return series.add_checkpoint(Checkpoint(int(event.imatrix.chunk_count), event.mtime, means,
                                                event.path.name, routing_counts(event.imatrix)))

    async def _add_snapshot(self, snap: Path, series: ConvergenceSeries) -> None:
        """A snapshot is often noticed while llama-imatrix is still writing it: try a few times. The
        result is dropped when another file was opened meanwhile (its series is another object)."""
        for delay in SNAPSHOT_RETRIES:
            await asyncio.sleep(delay)
            if series is not self.series:
                return
            try:
                outcome = await asyncio.to_thread(try_load, snap, self.chunk_size)
                if outcome.kind in ("loaded", "lazy") and outcome.imatrix is not None:
                    means = await asyncio.to_thread(channel_means, outcome.imatrix)
                    if series is self.series and series.insert_checkpoint(
                            Checkpoint(outcome.imatrix.chunk_count, outcome.mtime, means, snap.name,
                                       routing_counts(outcome.imatrix))):
                        self._series_changed(None)
                    return
            except Exception as exc:  # noqa: BLE001 - a broken snapshot is said, the series goes on
                self.host.post_message(LoadFailed(str(snap), str(exc) if isinstance(exc, ImatrixError)
                                                  else _bug(str(snap), exc)))
                return
            if outcome.kind == "missing":
                return  # "invalid" may be a header still half-written: the retries decide

    async def _load_series(self, paths: list[Path], series: ConvergenceSeries) -> None:
        for path in paths:
            await self._add_snapshot(path, series)

    @staticmethod
    def _step_note(step: Step) -> str | None:
        if step.min is None or step.median is None:
            return None
        return (f"{step.from_chunks}→{step.to_chunks} chunks: min cos {step.min:.4f} ({step.min_tensor}), "
                f"median {step.median:.5f} · c: convergence screen")

    def _series_changed(self, note: str | None) -> None:
        self.series_changed.publish(self.series)
        self.host.post_message(SeriesChanged(self.path or "", note))

    # -- the live state ---------------------------------------------------------------------------
    def _set_state(self, state: LiveState) -> None:
        self.clock.state = state
        self._tick()

    def _tick(self) -> None:
        self.clock.update()
        text = self.header_text()
        if text != self._header:
            self._header = text
            self.host.post_message(LiveStateChanged(self.path or "", text))

    # -- the detail pane's channels ------------------------------------------------------------------
    def read_channels(self, path: str | None, imatrix: "Imatrix | None", name: str) -> None:
        """Per-channel values of one tensor of what is on screen, off the UI thread."""
        self.host.run_worker(lambda: self._read_channels(path, imatrix, name), thread=True,
                             exclusive=True, group="channels", exit_on_error=False)

    def _read_channels(self, path: str | None, imatrix: "Imatrix | None", name: str) -> None:
        if imatrix is None or path is None or name not in imatrix.entries:
            return
        worker = get_current_worker()
        try:
            entry = imatrix.entries[name]
            values = entry.mean_importance()
            summary = summarize_channels(values)  # the sort of 1.8 M MoE values: not on the UI thread
        except TruncatedError:
            # a large file read lazily, rewritten by its collector: not an error; the reload selects
            # the tensor again
            if not worker.is_cancelled:
                self.host.post_message(ChannelsUnavailable(path, name))
            return
        except Exception as exc:  # noqa: BLE001 - said on screen
            self.host.post_message(LoadFailed(path, str(exc) if isinstance(exc, ImatrixError) else _bug(path, exc)))
            return
        if not worker.is_cancelled:
            self.host.post_message(ChannelsReady(path, name, values, entry.counts, summary))

