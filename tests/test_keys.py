"""Keys in every state (issue 12): waiting, cannot open, loaded; help per screen; small terminals."""

from __future__ import annotations

import io
import os
import shutil
import time

from rich.console import Console
from textual.widgets._footer import FooterKey

from textual.widgets import Input, Static

from conftest import FIXTURES
from conftest import wait_until as _wait
from imatui.tui.app import make_app
from imatui.tui.screens.convergence import ConvergenceScreen
from imatui.tui.screens.diff import DiffScreen
from imatui.tui.screens.help import HelpScreen
from imatui.tui.screens.too_small import TooSmallScreen
from imatui.tui.widgets.channel_plot import DetailPane
from imatui.tui.widgets.info_bar import InfoBar

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
CODE = FIXTURES / "smollm2-code.imatrix.gguf"
SIZE = (120, 36)


def _help(app) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(app.screen.query_one("#help-text", Static).content)
    return console.file.getvalue()


async def test_keys_typed_while_waiting_never_reach_a_hidden_filter(tmp_path):
    path = tmp_path / "later.imatrix.gguf"
    app = make_app([str(path)])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.focused is None
        await pilot.press("a", "t", "t", "n")  # the report's stray keys
        box = app.query_one("#filter", Input)
        assert box.value == "" and not box.display
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen) and "Quit" in _help(app)
        await pilot.press("escape")
        await pilot.press("slash")  # "/" always shows its box
        assert box.display and app.focused is box
        await pilot.press("f", "f", "n", "enter")
        shutil.copyfile(PROSE, path)
        await _wait(pilot, lambda: app.report is not None)
        await pilot.pause()
        count = app.query_one("#filter-count", Static)
        assert box.display and box.value == "ffn" and count.display
        assert app.tensor_table.row_count == 90
        assert str(count.render()) == "90 of 210 tensors"
        await pilot.press("q")
    assert not app.is_running


async def test_cannot_open_state_keys(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(PROSE.read_bytes()[:5000])
    old = time.time() - 60
    os.utime(bad, (old, old))
    app = make_app([str(bad)])
    async with app.run_test(size=SIZE) as pilot:
        await _wait(pilot, lambda: app.load_errors)
        await pilot.pause()
        assert "cannot open" in app.query_one(InfoBar).render().plain
        await pilot.press("b")
        assert app.browser is not None and app.browser.display
        await pilot.press("b")
        assert not app.browser.display and app.focused is None
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert type(app.screen).__name__ == "CommandPalette"
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("q")
    assert not app.is_running


async def test_ctrl_c_quits_even_from_the_filter_box():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("slash", "a")
        assert app.focused is app.query_one("#filter", Input)
        await pilot.press("ctrl+c")
    assert not app.is_running


async def test_q_in_imatui_diff_leaves_the_program():
    app = make_app([str(PROSE)], diff_with=str(CODE))
    async with app.run_test(size=SIZE) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, DiffScreen) and app.screen.report is not None)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = _help(app)
        assert "imatui help: diff" in str(app.screen.query_one("#help-title", Static).render())
        assert "Jensen–Shannon" in text and "Next diff" in text and "Layer table" not in text
        await pilot.press("escape")
        await pilot.press("q")
    assert not app.is_running


async def test_help_of_each_screen_is_built_from_its_bindings():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("question_mark")
        text = _help(app)
        lines = [" ".join(line.split()) for line in text.splitlines()]
        for line in ("q Quit: leave imatui", "s Sort: sort by the next column",
                     "b Files: show or hide the file browser", "? Help: keys and what the columns mean",
                     "^p palette: Open the command palette"):
            assert line in lines
        assert lines.index("q Quit: leave imatui") < lines.index("↑ / k Cursor up")  # ours first
        assert any(line.startswith("Σ(Act²) ") for line in lines) and "Layer table (t)" in lines
        await pilot.press("escape", "c")
        assert isinstance(app.screen, ConvergenceScreen)
        await pilot.press("question_mark")
        text = _help(app)
        assert "min cos" in text and "lowest cosine over tensors" in text and "Sort:" not in text
        await pilot.press("escape", "escape")
        assert app.screen is app.main_screen


async def test_a_filter_that_matches_nothing_says_so_and_clears_the_detail():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("slash", "z", "z", "z")
        await pilot.pause()
        assert str(app.query_one("#filter-count", Static).render()) == "no tensor matches (of 210)"
        title = app.query_one(DetailPane).query_one("#detail-title", Static)
        assert str(title.render()) == "no tensor matches 'zzz'"
        await pilot.press("escape")
        await pilot.press("escape")
        assert not app.query_one("#filter-count").display and app.tensor_table.row_count == 210


async def test_terminal_too_small_and_quit_in_the_footer_at_80_columns():
    app = make_app([str(PROSE)])
    async with app.run_test(size=(80, 24)) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        shown = [k.description for k in app.screen.query(FooterKey) if k.region.width and k.region.right <= 80]
        assert shown[0] == "Quit" and "Filter" in shown
        await pilot.resize_terminal(70, 20)
        await pilot.pause()
        assert isinstance(app.screen, TooSmallScreen)
        assert "terminal too small: 70×20" in str(app.screen.query_one("#too-small", Static).render())
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert app.screen is app.main_screen


async def test_the_layer_table_drives_the_detail_pane():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("t", "down", "down")
        await pilot.pause()
        summary = app.query_one("#layer-summary", Static)
        assert summary.display and not app.query_one(DetailPane).display
        text = str(summary.render())
        layer = app.report.layers[2]
        assert text.startswith(f"layer 2 · {layer.n_tensors} tensors · μΣ {layer.sum:.2f}")
        top = max((t for t in app.report.tensors if t.layer == 2), key=lambda t: t.sum)
        assert text.splitlines()[3].split()[:2] == [top.kind, f"{top.sum:.2f}"]
        await pilot.press("t")
        assert app.query_one(DetailPane).display and not summary.display
