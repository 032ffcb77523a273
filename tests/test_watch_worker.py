"""The OpenFile's follower inside a small host App (the real app's wiring is in test_live_app.py).

The host records every DataLoaded it receives, so the test can check that no statistics of a partial
file ever reached the screen, and shows the chunk count the way a table would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Static

from imatui.formats import load
from imatui.live.state import LiveState
from imatui.tui.messages import DataLoaded, LiveStateChanged, LoadFailed
from imatui.tui.open_file import OpenFile
from imatui.tui.screens.convergence import ConvergenceScreen
from test_live_follow import CHUNKS, SNAPSHOTS, Replay, write_atomic, write_in_place
from conftest import wait_until as _wait

# a file loaded as found is "idle" (followed, unchanged); "live" only once new versions come (issue 11)
DELETED, IDLE = LiveState.DELETED.value, LiveState.IDLE.value


class Host(App[None]):
    chunk_size = 512

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.reports: list = []
        self.failures: list[str] = []
        self.statuses: list[str] = []
        self.open_file = OpenFile(self)

    def compose(self) -> ComposeResult:
        yield Static("no data", id="chunks")
        yield Static("", id="live")

    def on_mount(self) -> None:
        self.open_file.open(str(self.path))

    def on_live_state_changed(self, message: LiveStateChanged) -> None:
        # the state's words (the real header adds growth and the age of the last write)
        text = self.open_file.status
        self.statuses.append(text)
        self.query_one("#live", Static).update(text)

    def on_data_loaded(self, message: DataLoaded) -> None:
        self.reports.append(message.report)
        self.query_one("#chunks", Static).update(f"chunks {message.report.chunk_count}")

    def on_load_failed(self, message: LoadFailed) -> None:
        self.failures.append(message.message)


@pytest.mark.parametrize("writer", [write_in_place, write_atomic], ids=["in-place", "atomic-rename"])
async def test_watcher_posts_every_checkpoint_and_nothing_partial(tmp_path, writer):
    path = tmp_path / "live.imatrix.gguf"
    app = Host(path)
    replay = Replay(path, writer, delete_at_end=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await _wait(pilot, lambda: app.open_file.status.startswith("waiting for"))
        assert app.query_one("#live", Static).content == "waiting for live.imatrix.gguf"
        replay.started.set()
        replay.start()
        seen = []
        for n in CHUNKS:
            await _wait(pilot, lambda: app.reports and app.reports[-1].chunk_count == n)
            assert str(app.query_one("#chunks", Static).content) == f"chunks {n}"
            seen.append(n)
            replay.shown[n].set()
        # the state flips first, the line shows it a message later (CI once read it in between)
        await _wait(pilot, lambda: app.open_file.status == DELETED
                    and app.query_one("#live", Static).content == DELETED)
        assert str(app.query_one("#chunks", Static).content) == "chunks 40"  # the last data stays
    replay.join(5)
    assert seen == [10, 20, 30, 40]
    assert [r.chunk_count for r in app.reports] == [10, 20, 30, 40]
    # every report is of a complete file: all 210 tensors, the fixture's exact Σ for one of them
    assert all(len(r.tensors) == 210 for r in app.reports)
    assert app.failures == []
    if writer is write_in_place:
        assert "writing…" in app.statuses
    assert [c.chunk_count for c in app.open_file.series.checkpoints] == [10, 20, 30, 40]
    assert app.open_file.series.mins()[0] == pytest.approx(0.9854764779437304, abs=1e-12)


async def test_convergence_screen_from_snapshots_grows_when_one_lands(tmp_path):
    path = tmp_path / "p.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[30].read_bytes())
    for n in (10, 20):  # snapshots already there when the viewer starts
        (tmp_path / f"p.imatrix.gguf.at_{n}").write_bytes(SNAPSHOTS[n].read_bytes())
    app = Host(path)
    async with app.run_test(size=(110, 30)) as pilot:
        await _wait(pilot, lambda: len(app.open_file.series) == 3 and app.open_file.status == IDLE)
        screen = ConvergenceScreen(app.open_file)
        await app.push_screen(screen)
        await pilot.pause()
        assert "checkpoints at 10, 20, 30 chunks" in str(screen.query_one("#conv-title", Static).content)
        table = screen.query_one("#conv-steps")
        assert table.row_count == 2
        assert [str(c) for c in table.get_row_at(0)[:2]] == ["10→20", "0.9855"]
        # a new snapshot lands while the screen is open: noticed, loaded, and the screen grows
        (tmp_path / "p.imatrix.gguf.at_40").write_bytes(SNAPSHOTS[40].read_bytes())
        await _wait(pilot, lambda: table.row_count == 3)
        assert "checkpoints at 10, 20, 30, 40 chunks" in str(screen.query_one("#conv-title", Static).content)
        assert str(table.get_row_at(2)[3]) == "blk.27.ffn_down.weight"
        assert "30→40 chunks" in str(screen.query_one("#conv-moved", Static).content)
        movers = screen.query_one("#conv-movers")
        assert [str(c) for c in movers.get_row_at(0)] == ["blk.27.ffn_down.weight", "0.98194", "1.81e-02"]
        assert movers.row_count == 5
        # the cursor on an earlier step shows that step's movers
        table.move_cursor(row=0)
        await pilot.pause()
        assert str(movers.get_row_at(0)[0]) == "blk.21.ffn_down.weight"
        assert "p.imatrix.gguf.at_40" in str(screen.query_one("#conv-snapshots", Static).content)
        assert screen.query_one("#conv-min").data == pytest.approx(
            [0.9854764779437304, 0.9962194323634926, 0.9819378560855336])
        await pilot.press("escape")
        assert not isinstance(app.screen, ConvergenceScreen)
    assert app.failures == []


async def test_a_snapshot_still_loading_when_another_file_is_opened_stays_out_of_its_series(tmp_path):
    path = tmp_path / "a.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[30].read_bytes())
    other = tmp_path / "b" / "b.imatrix.gguf"
    other.parent.mkdir()
    other.write_bytes(SNAPSHOTS[40].read_bytes())
    app = Host(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _wait(pilot, lambda: app.open_file.status == IDLE and len(app.open_file.series) == 1)
        snap = tmp_path / "a.imatrix.gguf.at_10"
        snap.write_bytes(b"")  # llama-imatrix has only just created it: the snapshot worker retries
        await _wait(pilot, lambda: snap in app.open_file.snapshots)
        app.open_file.open(str(other))  # the user opens another file meanwhile
        snap.write_bytes(SNAPSHOTS[10].read_bytes())
        await _wait(pilot, lambda: [r.chunk_count for r in app.reports] == [30, 40])
        await pilot.pause(1.5)  # the snapshot worker's retries at 0.2 and 0.5 s have found it
        assert [c.chunk_count for c in app.open_file.series.checkpoints] == [40]
    assert app.failures == []


async def test_the_statistics_pass_stops_when_another_file_is_opened(tmp_path, monkeypatch):
    import imatui.stats.tensor as tensor

    real = tensor.compute_stats
    passes: list = []

    def compute_stats(imatrix, progress=None, cancelled=None):
        passes.append(cancelled)
        return real(imatrix, progress=progress, cancelled=cancelled)

    monkeypatch.setattr(tensor, "compute_stats", compute_stats)
    path = tmp_path / "a.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[20].read_bytes())
    app = Host(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _wait(pilot, lambda: app.open_file.status == IDLE)
        assert len(passes) == 1 and passes[0] is not None and passes[0]() is False
        app.open_file.path = str(tmp_path / "other.gguf")  # what open() does when another file opens
        assert passes[0]() is True
        with pytest.raises(InterruptedError):  # which compute_stats turns into its early stop
            real(load(path), cancelled=passes[0])
    assert app.failures == [] and [r.chunk_count for r in app.reports] == [20]
