"""The follower against a writer thread that replays llama-imatrix's real checkpoint series.

Two writers: llama-imatrix's in-place rewrite (truncate, write half, flush, pause, write the rest)
and imatui collect's temporary file + rename. The follower must yield every checkpoint (10, 20, 30,
40) and never a partial file.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from imatui.formats import load
from imatui.live import Deleted, Failed, Loaded, SnapshotAdded, Waiting, Writing, follow, try_load

CHUNKS = (10, 20, 30, 40)
SNAPSHOTS = {n: FIXTURES / "checkpoints" / f"smollm2-prose.imatrix.gguf.at_{n}" for n in CHUNKS}
EXPECTED = {n: load(p, lazy=False) for n, p in SNAPSHOTS.items()}


def write_in_place(path: Path, data: bytes, pause: float) -> None:
    """As llama-imatrix: fopen("wb") truncates, then the bytes go out, here with a pause half-way."""
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause)
        f.write(data[len(data) // 2 :])


def write_atomic(path: Path, data: bytes, pause: float) -> None:
    """As imatui collect: a temporary file in the same folder, renamed over the target."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause)
        f.write(data[len(data) // 2 :])
    os.replace(tmp, path)


class Replay(threading.Thread):
    """Writes each checkpoint once the follower has shown the previous one (or after a timeout)."""

    def __init__(self, path: Path, write, pause: float = 0.3, delete_at_end: bool = False):
        super().__init__(daemon=True)
        self.path, self.write, self.pause, self.delete_at_end = path, write, pause, delete_at_end
        self.shown = {n: threading.Event() for n in CHUNKS}
        self.started = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        self.started.wait(10)
        time.sleep(0.2)  # the file appears only after the follower started
        for n in CHUNKS:
            self.write(self.path, SNAPSHOTS[n].read_bytes(), self.pause)
            self.shown[n].wait(10)
        if self.delete_at_end:
            time.sleep(0.1)
            os.remove(self.path)
        self.done.set()


async def collect(path: Path, replay: Replay, until, timeout: float = 20.0, **kwargs) -> list:
    events: list = []

    async def run() -> None:
        async for event in follow(path, ready=replay.started.set, **kwargs):
            events.append(event)
            if isinstance(event, Loaded):
                _assert_complete(event)
                ev = replay.shown.get(event.imatrix.chunk_count)
                if ev is not None:
                    ev.set()
            if until(events):
                return

    await asyncio.wait_for(run(), timeout)
    return events


def _assert_complete(event: Loaded) -> None:
    """Every tensor of the yielded file equals the checkpoint's: never a partial file."""
    im = event.imatrix
    expected = EXPECTED[im.chunk_count]
    assert list(im.entries) == list(expected.entries)
    for name, entry in expected.entries.items():
        np.testing.assert_array_equal(im[name].sums2, entry.sums2)
        np.testing.assert_array_equal(im[name].counts, entry.counts)
    assert im.path == event.path and not event.lazy


def _loaded_chunks(events) -> list[int]:
    return [e.imatrix.chunk_count for e in events if isinstance(e, Loaded)]


@pytest.mark.parametrize("writer", [write_in_place, write_atomic], ids=["in-place", "atomic-rename"])
async def test_follower_yields_every_checkpoint_and_never_a_partial_file(tmp_path, writer):
    path = tmp_path / "out.imatrix.gguf"
    replay = Replay(path, writer, delete_at_end=True)
    replay.start()
    events = await collect(path, replay, until=lambda evs: isinstance(evs[-1], Deleted))
    replay.join(5)
    assert isinstance(events[0], Waiting)  # started before the file existed
    assert _loaded_chunks(events) == [10, 20, 30, 40]
    assert isinstance(events[-1], Deleted)
    assert not any(isinstance(e, Failed) for e in events)
    writing = [e for e in events if isinstance(e, Writing)]
    if writer is write_in_place:
        # the pause half-way was seen (so the partial file was really offered) and said as "writing"
        assert len(writing) >= 3
    else:
        assert writing == []  # a rename never shows a partial file


async def test_deleted_then_recreated(tmp_path):
    path = tmp_path / "out.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[10].read_bytes())
    events: list = []

    async def run() -> None:
        async for event in follow(path):
            events.append(event)
            if len(events) == 1:
                os.remove(path)
            elif len(events) == 2:
                path.write_bytes(SNAPSHOTS[20].read_bytes())
            elif isinstance(event, Loaded):
                return

    await asyncio.wait_for(run(), 10)
    assert [type(e).__name__ for e in events if not isinstance(e, Writing)] == ["Loaded", "Deleted", "Loaded"]
    assert _loaded_chunks(events) == [10, 20]


async def test_snapshots_listed_at_start_and_noticed_when_they_appear(tmp_path):
    path = tmp_path / "out.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[20].read_bytes())
    (tmp_path / "out.imatrix.gguf.at_10").write_bytes(SNAPSHOTS[10].read_bytes())
    (tmp_path / "other.gguf.at_30").write_bytes(b"not ours")
    events: list = []

    async def run() -> None:
        async for event in follow(path):
            events.append(event)
            if isinstance(event, Loaded):
                (tmp_path / "out.imatrix.gguf.at_20").write_bytes(SNAPSHOTS[20].read_bytes())
            if isinstance(event, SnapshotAdded) and event.chunks == 20:
                return

    await asyncio.wait_for(run(), 10)
    snaps = [(e.path.name, e.chunks) for e in events if isinstance(e, SnapshotAdded)]
    assert snaps == [("out.imatrix.gguf.at_10", 10), ("out.imatrix.gguf.at_20", 20)]
    assert isinstance(events[0], SnapshotAdded) and isinstance(events[1], Loaded)


async def _follow_until_failed(path, settle_s: float) -> list:
    """Every event the follower yields up to and including Failed."""
    events: list = []

    async def run() -> None:
        async for event in follow(path, settle_s=settle_s):
            events.append(event)
            if isinstance(event, Failed):
                return

    await asyncio.wait_for(run(), 10)
    return events


async def test_a_file_that_never_parses_is_reported_once_it_settles(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"GGUF but not really a gguf file at all" * 10)
    started = time.monotonic()
    events = await _follow_until_failed(path, settle_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert [type(e) for e in events] == [Writing, Failed]
    assert str(path) in events[-1].message


async def test_an_empty_file_is_writing_not_an_error(tmp_path):
    path = tmp_path / "out.gguf"
    path.write_bytes(b"")
    events: list = []

    async def run() -> None:
        async for event in follow(path, settle_s=0.2):
            events.append(event)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run(), 1.0)
    assert events == [Writing(path)]


async def test_a_damaged_complete_gguf_fails_once_it_settles(tmp_path):
    # gguf-py's parse of this fails the way a short file does (TruncatedError): still not "writing…"
    # forever once the file stops changing
    path = tmp_path / "damaged.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\xff" * 200)
    assert try_load(path).kind == "truncated"
    started = time.monotonic()
    events = await _follow_until_failed(path, settle_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert [type(e) for e in events] == [Writing, Failed]
    assert events[-1].message.startswith(f"{path}: the GGUF file is truncated or damaged")
    # a damaged file whose mtime is already older than settle_s: Failed at the first look
    old = time.time() - 60
    os.utime(path, (old, old))
    events = await _follow_until_failed(path, settle_s=0.3)
    assert [type(e) for e in events] == [Failed]


def test_try_load_outcomes(tmp_path):
    path = tmp_path / "x.gguf"
    assert try_load(path).kind == "missing"
    data = SNAPSHOTS[30].read_bytes()
    path.write_bytes(data[:3])
    assert try_load(path).kind == "writing"
    for cut in (24, 4096, len(data) // 2, len(data) - 64):
        path.write_bytes(data[:cut])
        assert try_load(path).kind == "truncated", cut
    path.write_bytes(b"\0" * 64)  # complete but not an imatrix
    assert try_load(path).kind == "invalid"
    path.write_bytes(data)
    outcome = try_load(path)
    assert outcome.kind == "loaded" and outcome.imatrix.chunk_count == 30 and outcome.imatrix.path == path
    assert try_load(path, copy_limit=0).kind == "lazy"
