"""The real app follows a collection: a writer thread replays llama-imatrix's checkpoint series.

Every DataLoaded the app receives is recorded (run_test's message hook), so "the table never holds
statistics of a partial file" is checked on every update, not only on the ones a test happens to see.
"""

from __future__ import annotations

import os

import pytest

from imatui.formats import load
from imatui.stats.tensor import compute_stats
from imatui.tui.app import make_app
from imatui.tui.messages import DataLoaded, LoadFailed
from imatui.tui.screens.convergence import ConvergenceScreen
from imatui.live.state import LiveState

DELETED = LiveState.DELETED.value
from imatui.tui.widgets.info_bar import InfoBar
from test_live_follow import CHUNKS, SNAPSHOTS, Replay, write_atomic, write_in_place
from conftest import wait_until as _wait

TENSOR = "blk.21.ffn_down.weight"
EXPECTED = {n: compute_stats(load(p)) for n, p in SNAPSHOTS.items()}


def header(app) -> str:
    return str(app.main_screen.query_one(InfoBar).render())


def _check_report(report) -> None:
    """The statistics of one complete checkpoint, every tensor."""
    expected = EXPECTED[report.chunk_count]
    assert [t.name for t in report.tensors] == [t.name for t in expected.tensors]
    assert [t.sum for t in report.tensors] == [t.sum for t in expected.tensors]


@pytest.mark.parametrize("writer", [write_in_place, write_atomic], ids=["in-place", "atomic-rename"])
async def test_app_follows_the_checkpoint_series(tmp_path, writer):
    path = tmp_path / "live.imatrix.gguf"
    messages: list = []
    app = make_app([str(path)])
    replay = Replay(path, writer, delete_at_end=False)
    async with app.run_test(size=(120, 36), message_hook=messages.append) as pilot:
        await pilot.pause()
        assert "waiting for live.imatrix.gguf" in header(app)  # started before the file existed
        assert app.report is None
        replay.started.set()
        replay.start()
        for n in CHUNKS:
            await _wait(pilot, lambda: app.report is not None and app.report.chunk_count == n)
            await pilot.pause()
            assert f"{n} × 512" in header(app)
            assert "● live" in header(app)
            table = app.tensor_table
            assert table.row_count == 210
            assert table.get_cell(TENSOR, "sum").plain.strip() == f"{EXPECTED[n].tensor(TENSOR).sum:.2f}"
            replay.shown[n].set()
        replay.join(5)
        errors = [x.message for x in app._notifications if x.severity == "error"]
        notes = [x.message for x in app._notifications]
    loaded = [m for m in messages if isinstance(m, DataLoaded)]
    assert [m.report.chunk_count for m in loaded] == [10, 20, 30, 40]
    for m in loaded:
        _check_report(m.report)
    assert not [m for m in messages if isinstance(m, LoadFailed)]
    assert errors == []
    assert any("30→40 chunks: min cos 0.9819 (blk.27.ffn_down.weight)" in x for x in notes)


async def test_file_deleted_while_open_keeps_the_last_data(tmp_path):
    path = tmp_path / "run.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[20].read_bytes())
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        # followed, nothing changed yet (the header shows the state a message after it flips)
        await _wait(pilot, lambda: app.open_file.status == "idle" and "● idle" in header(app))
        assert "20 × 512" in header(app) and "● idle" in header(app)
        os.remove(path)
        await _wait(pilot, lambda: app.open_file.status == DELETED)
        await pilot.pause()
        assert "file deleted — showing last data" in header(app)
        assert "20 × 512" in header(app) and app.tensor_table.row_count == 210
        assert any("was deleted" in x.message and x.severity == "warning" for x in app._notifications)
        # it comes back (a new run into the same name): followed again
        path.write_bytes(SNAPSHOTS[30].read_bytes())
        await _wait(pilot, lambda: app.report.chunk_count == 30)
        await pilot.pause()
        assert "30 × 512" in header(app) and "● live" in header(app)
        assert not [x for x in app._notifications if x.severity == "error"]


async def test_snapshot_files_on_the_command_line_show_their_convergence():
    paths = [str(SNAPSHOTS[n]) for n in CHUNKS]
    app = make_app(paths)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: len(app.open_file.series) == 4)
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ConvergenceScreen)
        table = screen.query_one("#conv-steps")
        rows = [[str(c) for c in table.get_row_at(i)[:4]] for i in range(table.row_count)]
        assert rows == [
            ["10→20", "0.9855", "0.99986", "blk.21.ffn_down.weight"],
            ["20→30", "0.9962", "0.99999", "blk.4.ffn_down.weight"],
            ["30→40", "0.9819", "0.99993", "blk.27.ffn_down.weight"],
        ]
        # the tensor that moved most in the last step, Enter: the main table's cursor goes to it
        screen.query_one("#conv-movers").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, ConvergenceScreen)
        assert app.tensor_table.selected_key == "blk.27.ffn_down.weight"
        assert app.load_errors == []


@pytest.mark.parametrize("cut", [0, 2], ids=["empty", "half"])
async def test_a_half_written_file_at_open_is_writing_then_picked_up(tmp_path, cut):
    """llama-imatrix has just truncated the file (or written half of it) when `imatui FILE` opens it:
    no error, "writing…", and the complete file is shown when it lands."""
    path = tmp_path / "run.imatrix.gguf"
    data = SNAPSHOTS[20].read_bytes()
    path.write_bytes(data[: len(data) // cut] if cut else b"")
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: app.open_file.status == "writing…")
        await pilot.pause()
        assert "● writing…" in header(app)
        assert "run.imatrix.gguf is being written…" in str(app.main_screen.query_one("#placeholder").render())
        assert app.report is None and app.load_errors == []
        path.write_bytes(data)
        await _wait(pilot, lambda: app.report is not None and app.report.chunk_count == 20)
        await pilot.pause()
        assert "20 × 512" in header(app) and "● live" in header(app)
        assert app.tensor_table.get_cell(TENSOR, "sum").plain.strip() == f"{EXPECTED[20].tensor(TENSOR).sum:.2f}"
        assert app.load_errors == []
        assert not [x for x in app._notifications if x.severity == "error"]


async def test_channels_of_a_large_file_being_rewritten_are_not_an_error(tmp_path):
    """A file above the follower's COPY_LIMIT is read lazily: while its collector rewrites it, a
    cursor move cannot read the channels. That is said in the detail pane, not as an error."""
    from imatui.tui.messages import ChannelsUnavailable
    from imatui.tui.widgets.channel_plot import DetailPane

    path = tmp_path / "big.imatrix.gguf"
    path.write_bytes(SNAPSHOTS[30].read_bytes())
    messages: list = []
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36), message_hook=messages.append) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: app.open_file.status == "idle")
        app.workers.cancel_group(app, "watch")  # no reload in the middle of this test
        app.imatrix = load(path)  # lazy, as the app holds a file above COPY_LIMIT
        top = app.main_screen.query_one("#detail-top")
        await pilot.press("down")
        await app.wait_for_data()
        await pilot.pause()
        assert str(top.render()).startswith("top channels")
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the writer has been here
        await pilot.press("down")
        await app.wait_for_data()
        await pilot.pause()
        assert [m.name for m in messages if isinstance(m, ChannelsUnavailable)] == [app.selected_name]
        assert str(top.render()) == "file is being rewritten…"
        assert app.main_screen.query_one(DetailPane).query_one("#detail-title").render().plain.startswith(
            app.selected_name)
        assert app.load_errors == [] and not [m for m in messages if isinstance(m, LoadFailed)]
        assert not [x for x in app._notifications if x.severity == "error"]
        # the reload (here the app's own; the watcher's goes the same way) selects the tensor again
        app.open_path(str(path))
        await app.wait_for_data()
        await pilot.pause()
        assert str(top.render()).startswith("top channels")


async def test_an_unreadable_file_at_open_is_followed_and_opens_when_it_is_rewritten(tmp_path):
    path = tmp_path / "run.imatrix.gguf"
    path.write_bytes(b"\0" * 64)  # complete, not an imatrix
    old = os.stat(path).st_mtime - 60
    os.utime(path, (old, old))  # not being written: the follower reports it at once
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: app.open_file.status == "unreadable")
        await pilot.pause(0.3)
        assert "cannot open" in header(app)
        # one error notification: the follower's finding the same is not shown again
        assert len(app.load_errors) == 1 and str(path) in app.load_errors[0]
        assert len([x for x in app._notifications if x.severity == "error"]) == 1
        path.write_bytes(SNAPSHOTS[10].read_bytes())
        await _wait(pilot, lambda: app.report is not None and app.report.chunk_count == 10)
        await pilot.pause()
        assert "10 × 512" in header(app) and "● live" in header(app) and "cannot open" not in header(app)
        assert app.tensor_table.row_count == 210 and len(app.load_errors) == 1
