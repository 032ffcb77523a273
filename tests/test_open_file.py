"""The OpenFile owner in the real app: the repro of issue 11, live states, snapshot series.

Repro: a good file on screen is replaced (rename over it) by a file whose header parses but whose
statistics used to raise (a zero-length in_sum2); the app must say so in a notification, keep the
last data, and show the next good file that lands: following never stops.
"""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import FIXTURES
from conftest import wait_until as _wait
from imatui.formats import load, save
from imatui.formats.gguf import KEY_FINISHED
from imatui.live.state import STALL_MIN_S, LiveClock, LiveState, age_text
from imatui.stats.convergence import ConvergenceSeries
from imatui.tui.app import make_app
from imatui.tui.screens.convergence import ConvergenceScreen
from imatui.tui.widgets.info_bar import InfoBar
from test_mutation import zero_length_file

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
FOUR = FIXTURES / "smollm2-prose-4chunks.imatrix.gguf"
CHECKPOINTS = FIXTURES / "checkpoints"


def header(app) -> str:
    return app.main_screen.query_one(InfoBar).render().plain


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def test_a_file_that_breaks_the_statistics_is_a_notification_and_following_goes_on(tmp_path):
    path = tmp_path / "run.imatrix.gguf"
    shutil.copyfile(PROSE, path)
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: app.open_file.status == "idle" and "40 × 512" in header(app))
        assert "40 × 512" in header(app) and app.tensor_table.row_count == 210
        bad = zero_length_file(tmp_path / ".bad.tmp")
        os.replace(bad, path)
        await _wait(pilot, lambda: errors(app), timeout=15)
        assert errors(app) == [f"{path}: tensor blk.0.ffn_down.weight: in_sum2 has no values (1 row(s) of width 0)"]
        await pilot.pause()
        assert "40 × 512" in header(app) and app.tensor_table.row_count == 210  # the last data stays
        assert "● unreadable" in header(app)
        good = tmp_path / ".good.tmp"
        shutil.copyfile(FOUR, good)
        os.replace(good, path)
        await _wait(pilot, lambda: app.report is not None and app.report.chunk_count == 4, timeout=15)
        await pilot.pause()
        assert "4 × 512" in header(app) and "● live" in header(app)
        assert app.tensor_table.row_count == 210
        assert len(errors(app)) == 1


async def test_the_collectors_finished_file_says_finished(tmp_path):
    path = tmp_path / "run.imatrix.gguf"
    imatrix = load(FOUR, lazy=False)
    imatrix.metadata[KEY_FINISHED] = False
    save(imatrix, path)
    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: app.open_file.status == "idle")
        done = load(PROSE, lazy=False)
        done.metadata[KEY_FINISHED] = True
        save(done, path, force=True)
        await _wait(pilot, lambda: app.open_file.status == "finished")
        await pilot.pause()
        assert "● finished · written " in header(app) and "40 × 512" in header(app)


def test_live_clock_states_and_the_age_of_the_last_write():
    clock = LiveClock()
    assert clock.state is LiveState.OPENING
    clock.loaded(1000.0, finished=False, changed=False)  # the file as found
    assert clock.state is LiveState.IDLE and clock.header_text("f", now=1012.0) == "idle · written 12s ago"
    for t in (1010.0, 1020.0, 1030.0):  # a write every 10 s
        clock.loaded(t, finished=False, changed=True)
    assert clock.state is LiveState.LIVE and clock.usual_interval() == 10.0
    assert clock.stall_after() == max(STALL_MIN_S, 40.0) == 40.0
    assert clock.update(now=1069.0) is LiveState.LIVE  # 39 s: within four intervals
    assert clock.update(now=1071.0) is LiveState.STALLED
    assert clock.header_text("f", ConvergenceSeries(), now=1071.0) == "stalled · written 41s ago"
    clock.loaded(1080.0, finished=False, changed=True)  # writes come again
    assert clock.state is LiveState.LIVE
    clock.loaded(1090.0, finished=True, changed=True)
    assert clock.update(now=5000.0) is LiveState.FINISHED  # finished never turns stalled
    assert [age_text(s) for s in (0, 59.9, 60, 754, 3599, 3600, 7260, 90000)] == [
        "0s", "59s", "1m", "12m", "59m", "1h00m", "2h01m", "1d1h"]
    waiting = LiveClock()
    waiting.state = LiveState.WAITING
    assert waiting.header_text("/x/run.gguf") == "waiting for run.gguf"  # no age before a version


def _snapshots(folder, with_main: bool):
    for n in (10, 20, 30):
        shutil.copyfile(CHECKPOINTS / f"smollm2-prose.imatrix.gguf.at_{n}", folder / f"run.gguf.at_{n}")
    if with_main:
        shutil.copyfile(CHECKPOINTS / "smollm2-prose.imatrix.gguf.at_40", folder / "run.gguf")


@pytest.mark.parametrize("how", ["folder", "folder with main", "one snapshot", "main file"])
async def test_snapshot_series_however_it_is_opened(tmp_path, how):
    _snapshots(tmp_path, with_main=how != "folder")
    arg = {"folder": tmp_path, "folder with main": tmp_path, "one snapshot": tmp_path / "run.gguf.at_20",
           "main file": tmp_path / "run.gguf"}[how]
    app = make_app([str(arg)])
    expected = [10, 20, 30] if how == "folder" else [10, 20, 30, 40]
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _wait(pilot, lambda: [c.chunk_count for c in app.open_file.series.checkpoints] == expected, timeout=15)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConvergenceScreen)
        table = app.screen.query_one("#conv-steps")
        assert str(table.get_row_at(0)[0]) == "10→20" and str(table.get_row_at(0)[1]) == "0.9855"
        assert table.row_count == len(expected) - 1
    assert app.load_errors == []
