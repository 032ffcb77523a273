"""Follow an imatrix file while a collector rewrites it: an async generator of what happened.

No Textual here: the app's watch worker iterates `follow(path)` and turns the events into messages;
tests and benchmarks iterate it directly.

How a write is recognised:
- the watch is on the file's *folder* (watchfiles.awatch, inotify underneath), filtered to the file
  and to its `NAME.at_N` snapshots, because a watch on the file itself is lost when a writer renames
  a new file over it (imatui collect) and must exist before the file does (`imatui FILE` started
  before the collection);
- llama-imatrix rewrites in place (fopen "wb": truncate, then write), so a change can show an empty or
  half-written file. Such a file is never yielded and never an error: the bytes are read once,
  checked against the file's size and mtime before and after, and parsed eagerly from that private
  copy; a short read, a moved stamp or a TruncatedError means `Writing`, and the file is tried again
  on its next change (or after a short back-off, only while it keeps changing). A TruncatedError
  is also what a damaged but complete GGUF gives (gguf-py cannot tell the two apart), so one whose
  stamp stays put for `settle_s` (or whose mtime was already that old when following began) is `Failed`, as any other
  file that does not parse. Files above COPY_LIMIT are read lazily instead (every tensor read checks
  the stamp). Either way gguf-py's memory map never covers the user's file, which a writer may
  truncate under it (a SIGBUS, not an exception): imatui.formats.gguf parses the header from a
  private copy of its bytes.
- when idle the generator waits on the inotify watch; it never polls the file.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from imatui.errors import FormatError, ImatrixError, NotFoundError, TruncatedError
from imatui.formats import load as load_file
from imatui.imatrix import Imatrix

# files up to this size are copied into memory and parsed from the copy; larger ones are read lazily
# in place (every tensor read is checked against the stamp taken when the header was parsed)
COPY_LIMIT = 256 * 1024 * 1024
# back-off between tries while the file keeps changing without a complete version landing
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
# a file that does not parse (and is not merely short) is reported once it has not changed for this long
SETTLE_S = 2.0


@dataclass(frozen=True)
class Loaded:
    """A complete version of the file. `imatrix` is eager (safe to keep) unless `lazy`."""

    path: Path
    imatrix: Imatrix = field(repr=False)
    stamp: tuple[int, int, int]  # size, mtime_ns, inode
    mtime: float
    lazy: bool = False
    changed_at: float | None = None  # time.monotonic() of the change event that led here


@dataclass(frozen=True)
class Writing:
    """The file is being written (empty, short or changing): keep showing the last good data."""

    path: Path


@dataclass(frozen=True)
class Waiting:
    """The file does not exist (yet)."""

    path: Path


@dataclass(frozen=True)
class Deleted:
    """The file was loaded before and is gone now."""

    path: Path


@dataclass(frozen=True)
class SnapshotAdded:
    """A llama-imatrix --save-frequency snapshot NAME.at_N next to the file."""

    path: Path
    chunks: int


@dataclass(frozen=True)
class Failed:
    """The file is complete (its size stopped changing) but is not a readable imatrix."""

    path: Path
    message: str


FollowEvent = Loaded | Writing | Waiting | Deleted | SnapshotAdded | Failed


def snapshot_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.name) + r"\.at_(\d+)$")


def list_snapshots(path: str | Path) -> list[tuple[int, Path]]:
    """Existing NAME.at_N snapshots beside `path`, by N."""
    path = Path(path).absolute()
    pattern = snapshot_pattern(path)
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), path.parent / name))
    return sorted(found)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class _Outcome:
    """What one try to read the file gave (internal)."""

    __slots__ = ("kind", "imatrix", "stamp", "mtime", "message")

    def __init__(self, kind: str, imatrix: Imatrix | None = None, stamp: tuple[int, int, int] | None = None,
                 mtime: float = 0.0, message: str = "") -> None:
        self.kind, self.imatrix, self.stamp, self.mtime, self.message = kind, imatrix, stamp, mtime, message


def _load_from_copy(path: Path, data: bytes, chunk_size: int, load: Callable[..., Imatrix]) -> Imatrix:
    fd = os.memfd_create("imatui-follow", 0)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        proxy = f"/proc/self/fd/{fd}"
        try:
            imatrix = load(proxy, chunk_size=chunk_size, lazy=False)
        except ImatrixError as exc:
            # name the user's file, not the private copy
            raise type(exc)(exc.reason, path) from None
        return imatrix
    finally:
        os.close(fd)


def try_load(path: str | Path, chunk_size: int = 512, *, copy_limit: int = COPY_LIMIT,
             load: Callable[..., Imatrix] | None = None) -> _Outcome:
    """One attempt to read a complete version of `path` (blocking; run it in a thread).

    kind is "loaded" ("lazy" above copy_limit), "writing" (empty, or changed while read),
    "truncated" (ends early or is damaged: a writer still at it, or a broken file once its stamp
    stops moving), "missing" or "invalid".
    """
    if load is None:
        load = load_file
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _Outcome("missing")
    except OSError as exc:
        return _Outcome("invalid", message=f"{path}: cannot read: {exc}")
    stamp = _stamp(st)
    if stat.S_ISDIR(st.st_mode):
        return _Outcome("invalid", stamp=stamp, mtime=st.st_mtime,
                        message=f"{path}: is a directory, not an imatrix file")
    if st.st_size < 4:  # empty, or not even the magic number yet: a writer has just started
        return _Outcome("writing", stamp=stamp)
    lazy = st.st_size > copy_limit or not hasattr(os, "memfd_create")
    try:
        if lazy:
            imatrix = load(path, chunk_size=chunk_size, lazy=True)
        else:
            with open(path, "rb") as f:
                data = f.read()
                after = os.fstat(f.fileno())
            if _stamp(after) != stamp or len(data) != st.st_size:
                return _Outcome("writing", stamp=_stamp(after))
            imatrix = _load_from_copy(path, data, chunk_size, load)
    except FileNotFoundError:
        return _Outcome("missing")
    except NotFoundError:
        return _Outcome("missing")
    except OSError as exc:  # permission denied, an I/O error: said, and tried again on the next change
        return _Outcome("invalid", stamp=stamp, mtime=st.st_mtime, message=f"{path}: cannot read: {exc}")
    except TruncatedError as exc:
        return _Outcome("truncated", stamp=stamp, mtime=st.st_mtime, message=str(exc))
    except ImatrixError as exc:
        if isinstance(exc, FormatError) and "empty" in exc.reason:
            return _Outcome("writing", stamp=stamp)
        return _Outcome("invalid", stamp=stamp, mtime=st.st_mtime, message=str(exc))
    try:
        now = _stamp(os.stat(path))
    except FileNotFoundError:
        return _Outcome("missing")
    if now != stamp:
        return _Outcome("writing", stamp=now)
    imatrix.path = path
    return _Outcome("lazy" if lazy else "loaded", imatrix=imatrix, stamp=stamp, mtime=st.st_mtime)


async def follow(
    path: str | Path,
    *,
    chunk_size: int = 512,
    step_ms: int = 30,
    debounce_ms: int = 400,
    snapshots: bool = True,
    copy_limit: int = COPY_LIMIT,
    settle_s: float = SETTLE_S,
    retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ready: Callable[[], None] | None = None,
) -> AsyncIterator[FollowEvent]:
    """Yield what happens to `path`: its first state at once, then every change, until closed.

    `step_ms`/`debounce_ms` go to watchfiles (a burst of writes collapses into one try).
    `ready` is called once the folder watch is in place (tests start their writer then).
    """
    from watchfiles import Change, awatch

    started_wall = time.time()
    path = Path(path).absolute()
    folder = path.parent
    target = str(path)
    pattern = snapshot_pattern(path)

    def wanted(change: Change, changed: str) -> bool:
        if changed == target:
            return True
        return snapshots and os.path.dirname(changed) == str(folder) and bool(
            pattern.match(os.path.basename(changed)))

    if not folder.is_dir():
        yield Failed(path, f"{folder}: the folder does not exist")
        return

    queue: asyncio.Queue[tuple[float, set[tuple[Change, str]]]] = asyncio.Queue()
    stop = asyncio.Event()
    watching = asyncio.Event()

    async def pump() -> None:
        gen = awatch(folder, watch_filter=wanted, debounce=debounce_ms, step=step_ms, stop_event=stop,
                     recursive=False)
        # the first __anext__ creates the inotify watch before it waits for changes
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        watching.set()
        try:
            changes = await first
            while True:
                queue.put_nowait((time.monotonic(), changes))
                changes = await gen.__anext__()
        except StopAsyncIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - e.g. the inotify watch limit: tell the follower
            queue.put_nowait((time.monotonic(), exc))  # type: ignore[arg-type]
        finally:
            await gen.aclose()

    task = asyncio.create_task(pump())
    try:
        await watching.wait()
        await asyncio.sleep(0.01)  # let the watcher thread register the inotify watch
        if ready is not None:
            ready()

        seen_snapshots: set[Path] = set()
        if snapshots:
            for n, snap in list_snapshots(path):
                seen_snapshots.add(snap)
                yield SnapshotAdded(snap, n)

        state = ""  # what was last said about the file: loaded, writing, waiting, deleted, failed
        had_data = False
        last_stamp: tuple[int, int, int] | None = None
        retry_index: int | None = None  # position in retry_delays while a back-off is running
        invalid_since: tuple[tuple[int, int, int] | None, float] | None = None
        changed_at: float = time.monotonic()
        target_changed = True  # look at the file once at the start

        while True:
            delay: float | None = None
            if target_changed:
                target_changed = False
                outcome = await asyncio.to_thread(try_load, path, chunk_size, copy_limit=copy_limit)
                if outcome.kind in ("loaded", "lazy"):
                    retry_index, invalid_since = None, None
                    if outcome.stamp != last_stamp or state != "loaded":
                        last_stamp = outcome.stamp
                        state, had_data = "loaded", True
                        assert outcome.imatrix is not None and outcome.stamp is not None
                        yield Loaded(path, outcome.imatrix, outcome.stamp, outcome.mtime,
                                     lazy=outcome.kind == "lazy", changed_at=changed_at)
                elif outcome.kind == "missing":
                    retry_index, invalid_since = None, None
                    new_state = "deleted" if had_data else "waiting"
                    if state != new_state:
                        state = new_state
                        yield Deleted(path) if had_data else Waiting(path)
                elif outcome.kind == "writing":
                    invalid_since = None
                    retry_index = 0 if retry_index is None else retry_index + 1
                    if retry_index < len(retry_delays):
                        delay = retry_delays[retry_index]
                    else:
                        retry_index = None  # it stopped changing short: wait for the next write
                    if state != "writing":
                        state = "writing"
                        yield Writing(path)
                else:  # truncated or does not parse: a writer still at it, or a broken file once
                    # its stamp stops moving (for settle_s here, or its mtime is that old already)
                    now = time.monotonic()
                    if invalid_since is None or invalid_since[0] != outcome.stamp:
                        invalid_since = (outcome.stamp, now)
                    # "already that old" counts from when following began: a file written a moment
                    # before the viewer started (and still being written) gets its full settle_s
                    waited = max(now - invalid_since[1], started_wall - outcome.mtime if outcome.mtime else 0.0)
                    if waited >= settle_s:
                        retry_index = None
                        if state != "failed":
                            state = "failed"
                            yield Failed(path, outcome.message)
                    else:
                        delay = settle_s - waited
                        if state != "writing":
                            state = "writing"
                            yield Writing(path)

            # wait for a change; with a try pending, at most until it is due
            if delay is not None:
                try:
                    when, changes = await asyncio.wait_for(queue.get(), timeout=delay)
                except TimeoutError:
                    target_changed = True
                    changed_at = time.monotonic()
                    continue
            else:
                when, changes = await queue.get()
            while not queue.empty() and not isinstance(changes, Exception):
                _, more = queue.get_nowait()
                changes = more if isinstance(more, Exception) else changes | more
            if isinstance(changes, Exception):
                yield Failed(path, f"{folder}: cannot watch the folder: {changes}")
                return
            for change, changed in sorted(changes, key=lambda c: c[1]):
                if changed == target:
                    if not target_changed:
                        changed_at = when
                    target_changed = True
                    retry_index = None  # a fresh change: the back-off starts over
                elif snapshots and change != Change.deleted:
                    snap = Path(changed)
                    if snap not in seen_snapshots and snap.exists():
                        seen_snapshots.add(snap)
                        m = pattern.match(snap.name)
                        yield SnapshotAdded(snap, int(m.group(1)) if m else 0)
    finally:
        stop.set()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
            pass
