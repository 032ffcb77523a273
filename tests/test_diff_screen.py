"""The diff view driven from the keyboard (and mouse) through Textual's pilot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, Sparkline, Static

from imatui.formats import load
from imatui.formats.write import save
from imatui.tui.screens.diff import DiffScreen, KindSparkline, OverlayPlot, layer_columns

FIXTURES = Path(__file__).parent / "fixtures"
PROSE = str(FIXTURES / "smollm2-prose.imatrix.gguf")
CODE = str(FIXTURES / "smollm2-code.imatrix.gguf")


class _Host(App):
    def __init__(self, a: str, b: str) -> None:
        super().__init__()
        self.a, self.b = a, b

    def on_mount(self) -> None:
        self.push_screen(DiffScreen(self.a, self.b))


async def _until(pilot, condition, timeout: float = 30.0) -> None:
    """Let the app run until condition() holds. (workers.wait_for_complete() raises when a detail
    worker was superseded, and a superseded worker is the normal case when the cursor moves.)"""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "timed out waiting for the diff screen"
        await pilot.pause(0.02)


def _settled(screen: DiffScreen) -> bool:
    """The screen shows its report (or its error) and the plot shows the tensor under the cursor."""
    if screen.error is not None and screen.report is None:
        return True
    if screen.report is None or screen.computing:
        return False
    plot = screen.query_one(OverlayPlot)
    return screen.selected is None or (plot.pair is not None and plot.pair.name == screen.selected
                                       and screen._cursor_name() == screen.selected)


async def _ready(pilot) -> DiffScreen:
    await _until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))
    screen = pilot.app.screen
    await _until(pilot, lambda: _settled(screen))
    await pilot.pause()
    return screen


def _table(screen: DiffScreen) -> DataTable:
    return screen.query_one("#diff-table", DataTable)


def _keys(table: DataTable) -> list[str]:
    return [row.key.value for row in table.ordered_rows]


def _cursor(table: DataTable) -> str:
    return table.ordered_rows[table.cursor_row].key.value


def _cell(table: DataTable, row: str, column: str) -> str:
    return str(table.get_cell(row, column))


def _labels(table: DataTable) -> list[str]:
    return [str(c.label) for c in table.ordered_columns]


async def test_rows_header_sparklines_and_detail():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        assert table.row_count == 210
        keys = _keys(table)
        assert keys[:2] == ["blk.24.ffn_down.weight", "blk.5.ffn_down.weight"]  # lowest cosine first
        assert _cell(table, keys[0], "cossim") == "0.2652"
        assert _cell(table, keys[0], "sum") == "551.76"
        assert _cell(table, keys[0], "rank") == "7"
        assert _cell(table, keys[0], "channel") == "157"
        header = str(screen.query_one("#diff-header", Static).render())
        assert "differs: datasets ../calib/prose.txt ≠ ../calib/code.txt" in header
        # one sparkline per kind plus the all-layers line, 30 layers each
        lines = {s.kind: s for s in screen.query(KindSparkline)}
        assert set(lines) == {"all layers", "attn_k", "attn_output", "attn_q", "attn_v", "ffn_down",
                              "ffn_gate", "ffn_up"}
        spark = lines["ffn_down"].query_one(Sparkline)
        assert len(spark.data) == 30 and max(spark.data) == pytest.approx(1 - 0.2652168352305437)
        assert spark.data.index(max(spark.data)) == 24
        # the detail pane follows the cursor: both series read for the selected tensor
        plot = screen.query_one(OverlayPlot)
        assert plot.pair.name == "blk.24.ffn_down.weight"
        assert plot.pair.a.shape == plot.pair.b.shape == (1536,)
        assert plot.pair.b[157] == pytest.approx(70.2035, rel=1e-5)
        title = str(screen.query_one("#diff-detail-title", Static).render())
        assert "cos 0.2652" in title and "top channel 157" in title
        # the sparklines point at the selected tensor: its kind's row and a caret at its layer
        assert [r.kind for r in screen.query(KindSparkline) if r.has_class("-selected")] == ["ffn_down"]
        # the caret is placed once the sparklines are laid out (their resize): on a busy machine
        # that can come a frame after the plot is drawn
        await _until(pilot, lambda: "▼" in str(screen.query_one("#diff-caret", Static).render()))
        caret = str(screen.query_one("#diff-caret", Static).render())
        assert caret.endswith("▼ layer 24")
        assert caret.index("▼") - 12 in layer_columns(30, spark.size.width, 24)


async def test_sort_by_key_and_header_click():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        assert _labels(table)[3] == "CosSim ▼"
        await pilot.press("s")  # cossim -> js
        assert screen.sort_column == "js"
        js = [screen.report.tensor(k).js for k in _keys(table)]
        assert js == sorted(js, reverse=True) and _keys(table)[0] == "blk.24.ffn_down.weight"
        await pilot.press("r")
        assert _keys(table)[0] == min(screen.report.tensors, key=lambda t: (t.js, t.name)).name
        await pilot.press("S", "S")  # back past cossim to ratio
        assert screen.sort_column == "ratio"
        assert _keys(table)[0] == max(screen.report.tensors, key=lambda t: t.sum_ratio).name
        # a click on the "Rank A" header sorts by it; a second click reverses
        rank = table._get_column_region(5)
        await pilot.click(DataTable, offset=(rank.x + 2, 0))
        await pilot.pause()
        assert screen.sort_column == "rank" and not screen.sort_reverse
        assert [_cell(table, k, "rank") for k in _keys(table)[:3]] == ["1", "2", "3"]
        await pilot.click(DataTable, offset=(rank.x + 2, 0))
        await pilot.pause()
        assert screen.sort_reverse and _cell(table, _keys(table)[0], "rank") == "210"


async def test_filter_regex_and_substring():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        await pilot.press("slash")
        box = screen.query_one("#diff-filter", Input)
        assert box.has_focus and box.display
        await pilot.press(*"ffn_down", "enter")
        assert table.row_count == 30 and all("ffn_down" in k for k in _keys(table))
        assert table.has_focus and not box.display
        assert _keys(table)[0] == "blk.24.ffn_down.weight"
        await pilot.press("slash", "ctrl+u")
        box.value = r"blk\.1[0-2]\.attn_q"  # typed once above: set here (each key press re-filters)
        await pilot.press("enter")
        assert _keys(table) == sorted(_keys(table), key=lambda k: screen.report.tensor(k).cossim)
        assert set(_keys(table)) == {"blk.10.attn_q.weight", "blk.11.attn_q.weight", "blk.12.attn_q.weight"}
        # not a valid regex: matched as plain text, and the status line says so
        await pilot.press("slash", "ctrl+u", *"attn_(", "enter")
        assert table.row_count == 0
        assert "not a regex" in str(screen.query_one("#diff-status", Static).render())
        # a dot alone is text, as in the main table: blk.1. is block 1 only, not blk.10 to blk.19
        await pilot.press("slash", "ctrl+u")
        box.value = "blk.1."
        await pilot.press("enter")
        assert table.row_count == 7 and all(k.startswith("blk.1.") for k in _keys(table))
        # escape in the filter box clears the filter (and does not close the screen)
        await pilot.press("slash", "escape")
        assert table.row_count == 210 and isinstance(app.screen, DiffScreen)


async def test_jump_to_next_and_previous_most_different():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        order = [t.name for t in screen.report.most_different()]
        assert _cursor(table) == order[0]
        await pilot.press("n", "n")
        assert _cursor(table) == order[2]
        await pilot.press("N")
        assert _cursor(table) == order[1]
        await pilot.press("right_square_bracket")
        assert _cursor(table) == order[2]
        # sorted by name, the jumps still follow the cosine order, from wherever the cursor is
        for _ in range(3):
            await pilot.press("S")  # cossim -> ratio -> sum -> name
        assert screen.sort_column == "name"
        assert _keys(table)[0] == "blk.0.attn_k.weight"
        table.move_cursor(row=0)
        k = order.index("blk.0.attn_k.weight")
        await pilot.press("n")
        assert _cursor(table) == order[k + 1]
        await pilot.press("N", "N")
        assert _cursor(table) == order[k - 1]
        await _until(pilot, lambda: _settled(screen))
        assert screen.query_one(OverlayPlot).pair.name == order[k - 1]
        # at the most different tensor there is nothing further back
        table.move_cursor(row=table.get_row_index(order[0]))
        await pilot.press("N")
        assert _cursor(table) == order[0]


async def test_toggle_a_b_delta_values_and_detail_redraw():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        top = "blk.24.ffn_down.weight"
        assert _labels(table)[1] == "Σ A" and _cell(table, top, "sum") == "551.76"
        plot = screen.query_one(OverlayPlot)
        assert plot.render().plain.splitlines()[0].split() == ["━━", "A", "━━", "B"]
        before = plot.draws
        await pilot.press("v")
        assert _labels(table)[1] == "Σ B" and _cell(table, top, "sum") == "546.92"
        assert _cell(table, top, "rank") == "6" and _cell(table, top, "top") == "70.2035"  # four decimals, as Max
        await pilot.press("v")
        assert _labels(table)[1] == "Σ B−A"
        assert _cell(table, top, "sum") == "-4.84" and _cell(table, top, "rank") == "-1"
        assert _cell(table, top, "top") == "+70.1284"
        await _until(pilot, lambda: plot.draws > before)
        assert plot.mode == 2
        drawn = plot.render().plain
        assert "B − A per channel" in drawn and "1535" in drawn  # the Δ series and whole channel ticks
        assert "70.1┤" in drawn  # channel 157's +70 is the top of the Δ axis
        assert drawn.splitlines()[0].strip() == "━━ B − A"  # the legend line, above the canvas
        await pilot.press("v")
        assert _labels(table)[1] == "Σ A"
        # the plot is rebuilt at the new size when the terminal is resized
        count = plot.draws
        width = plot.size.width
        await pilot.resize_terminal(100, 36)
        await _until(pilot, lambda: plot.size.width < width and plot.draws > count)
        lines = plot.render().plain.splitlines()
        assert max(len(line) for line in lines) <= plot.size.width


async def test_missing_tensor_and_escape_closes(tmp_path):
    im = load(PROSE).materialize()
    del im.entries["blk.7.ffn_up.weight"]
    b = save(im, tmp_path / "less.imatrix.gguf")
    app = _Host(PROSE, str(b))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        assert table.row_count == 210
        assert _cell(table, "blk.7.ffn_up.weight", "note") == "missing in B"
        assert _keys(table)[-1] == "blk.7.ffn_up.weight"  # not comparable: after every cosine
        table.move_cursor(row=209)
        await pilot.press("n")  # from a row without a cosine: to the most different tensor
        assert _cursor(table) == screen.report.most_different()[0].name
        header = str(screen.query_one("#diff-header", Static).render())
        assert "only in A: 1" in header and "tensors 210 ≠ 209" in header
        await pilot.press("escape")
        assert not isinstance(app.screen, DiffScreen)


async def test_swap_a_and_b():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        await pilot.press("x")
        await _ready(pilot)
        header = str(screen.query_one("#diff-header", Static).render())
        assert header.startswith("A: " + CODE) and "differs: datasets ../calib/code.txt ≠ ../calib/prose.txt" in header
        top = "blk.24.ffn_down.weight"
        assert _cursor(table) == top
        assert _cell(table, top, "sum") == "546.92" and _cell(table, top, "rank") == "6"
        assert _cell(table, top, "ratio") == "1.009"
        plot = screen.query_one(OverlayPlot)
        await _until(pilot, lambda: plot.pair.a[157] > 70)  # the channels are read again, swapped
        assert plot.pair.a[157] == pytest.approx(70.2035, rel=1e-5)


async def test_identical_files_draw_flat_sparklines():
    app = _Host(PROSE, str(FIXTURES / "smollm2-prose.imatrix.dat"))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        rows = list(screen.query(KindSparkline))
        assert len(rows) == 8
        for row in rows:
            drawn = row.query_one(Sparkline).render()
            text = "".join(seg.text for seg in drawn.__rich_console__(app.console, app.console.options))
            assert set(text) == {"▁"}, row.kind  # 1 − cos ~ 1e-15 is no difference at all
        header = str(screen.query_one("#diff-header", Static).render())
        assert header.splitlines()[2].startswith("differs: format gguf ≠ dat · 210/210 compared, cosine min 1.0000")


async def test_bad_file_notifies_and_keeps_running(tmp_path):
    app = _Host(PROSE, str(tmp_path / "nope.gguf"))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        assert screen.report is None and "nope.gguf" in screen.error
        assert any("nope.gguf" in n.message and n.severity == "error" for n in app._notifications)
        assert "cannot compare" in str(screen.query_one("#diff-header", Static).render())
        await pilot.press("n", "v", "s", "r")  # nothing to act on: no crash
        assert app.is_running and app.screen is screen
        await pilot.press("q")
        assert not isinstance(app.screen, DiffScreen)


async def _palette(pilot, text: str) -> None:
    """Run a command through the palette: type it, wait for the hits, take the first."""
    from textual.command import CommandPalette
    from textual.widgets import OptionList

    await pilot.press("ctrl+p")
    await _until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
    await pilot.press(*text)
    results = pilot.app.screen.query_one(OptionList)
    await _until(pilot, lambda: results.option_count > 0 and results.highlighted is not None)
    await pilot.press("enter")
    await _until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))


async def test_palette_commands():
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        await _palette(pilot, "diff: sort by JS")
        assert app.screen is screen and screen.sort_column == "js"
        assert _labels(table)[4] == "JS ▼"
        await _palette(pilot, "diff: toggle A / B")
        assert screen.mode == 1 and _labels(table)[1] == "Σ B"


def _moe_files(tmp_path) -> tuple[str, str]:
    """Two small MoE-shaped files: expert 1 never hit in B; blk.0.attn_q has another width in B."""
    import numpy as np

    from imatui.imatrix import Entry, Imatrix

    rng = np.random.default_rng(7)
    out = []
    for side in ("a", "b"):
        counts = np.array([40.0, 0.0 if side == "b" else 12.0, 30.0, 25.0])
        sums2 = rng.random((4, 16)).astype(np.float32) * counts[:, None].astype(np.float32)
        if side == "b":
            sums2[2, 5] *= 50  # expert 2, channel 5 takes over in B
        width = 8 if side == "b" else 12
        entries = {
            "blk.0.ffn_down_exps.weight": Entry.from_arrays("blk.0.ffn_down_exps.weight", sums2, counts),
            "blk.0.attn_q.weight": Entry.from_arrays("blk.0.attn_q.weight",
                                                     rng.random((1, width)).astype(np.float32), [10.0]),
        }
        im = Imatrix(entries=dict(sorted(entries.items())), datasets=[f"{side}.txt"], chunk_count=2,
                     chunk_size=512)
        out.append(str(save(im, tmp_path / f"moe-{side}.imatrix.gguf")))
    return out[0], out[1]


async def test_moe_and_shape_mismatch_rows(tmp_path):
    a, b = _moe_files(tmp_path)
    app = _Host(a, b)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        table = _table(screen)
        assert _keys(table) == ["blk.0.ffn_down_exps.weight", "blk.0.attn_q.weight"]
        moe = "blk.0.ffn_down_exps.weight"
        assert _cell(table, moe, "channel") == "e2:5"
        assert _cell(table, "blk.0.attn_q.weight", "note") == "shape mismatch: 1x12 in A, 1x8 in B"
        plot = screen.query_one(OverlayPlot)
        assert plot.pair.experts == [0, 2, 3] and plot.pair.a.shape == (48,)  # expert 1 left out of both
        assert "3 experts × 16" in plot.render().plain
        title = str(screen.query_one("#diff-detail-title", Static).render())
        assert title.split("\n")[3] == "1 expert without tokens in A or B left out"
        # the shape-mismatch row: each side drawn on its own channels, and no B − A to draw
        await pilot.press("down")
        await _until(pilot, lambda: _settled(screen))
        assert plot.pair.name == "blk.0.attn_q.weight" and plot.pair.b.shape == (8,)
        assert "shapes differ" in plot.render().plain
        await pilot.press("v", "v")
        await pilot.pause()
        assert plot.mode == 2 and "shapes differ" in plot.render().plain


async def test_imatui_diff_opens_the_screen_in_the_app():
    """`imatui diff A B` runs make_app([A], diff_with=B): the app pushes this screen over its own."""
    from imatui.tui.app import make_app

    app = make_app([PROSE], diff_with=CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        assert (screen.a_path, screen.b_path) == (PROSE, CODE)
        assert _keys(_table(screen))[0] == "blk.24.ffn_down.weight"
        await pilot.press("escape")
        await _until(pilot, lambda: not isinstance(app.screen, DiffScreen))
        assert app.is_running


async def test_shape_mismatch_with_one_side_all_zero_counts(tmp_path):
    """A tensor whose shape differs and whose counts are all 0 in A: A has no data to draw. The plot
    says so instead of dying in render (min() of an empty series)."""
    import numpy as np

    from imatui.imatrix import Entry, Imatrix
    from imatui.stats.diff import channel_pair

    paths = []
    for side, width, count in (("a", 12, 0.0), ("b", 8, 10.0)):
        sums2 = np.zeros((1, width), np.float32) if count == 0 else np.arange(1, width + 1, dtype=np.float32)[None]
        name = "blk.0.attn_q.weight"
        im = Imatrix(entries={name: Entry.from_arrays(name, sums2, [count])}, datasets=[f"{side}.txt"],
                     chunk_count=2, chunk_size=512)
        paths.append(str(save(im, tmp_path / f"zero-{side}.imatrix.gguf")))
    pair = channel_pair(load(paths[0]), load(paths[1]), "blk.0.attn_q.weight")
    assert pair.a is None and pair.b.tolist() == [float(i) / 10 for i in range(1, 9)]
    app = _Host(*paths)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        assert _cell(_table(screen), "blk.0.attn_q.weight", "note") == "shape mismatch: 1x12 in A, 1x8 in B"
        plot = screen.query_one(OverlayPlot)
        assert plot.pair.name == "blk.0.attn_q.weight"
        assert "no data in A" in plot.render().plain
        ticks = plot.render().plain.splitlines()[-1].split()
        assert ticks[0] == "0" and ticks[-1] == "7" and all(t.isdigit() for t in ticks)  # whole channels
        await pilot.press("v", "v")
        await pilot.pause()
        assert plot.mode == 2 and "no data in A" in plot.render().plain
        assert app.is_running and app.screen is screen
    # the plot itself guards empty series too (a pair built elsewhere)
    plot = OverlayPlot()
    plot.pair = type(pair)("t", np.zeros(0), np.arange(1.0, 9.0), 8, [])
    assert "no data in A" in plot.build(80, 20)
    plot.pair = type(pair)("t", np.arange(1.0, 9.0), np.zeros(0), 8, [])
    assert "no data in B" in plot.build(80, 20)


async def test_file_rewritten_under_the_lazy_reader_is_said_in_the_detail_pane(tmp_path):
    """B is rewritten after the diff was computed: reading the next tensor's channels finds the file
    changed (TruncatedError). The detail pane says so; no red error, the app keeps running."""
    import numpy as np

    from imatui.imatrix import Entry, Imatrix

    a, b = _moe_files(tmp_path)
    app = _Host(a, b)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _ready(pilot)
        assert screen.selected == "blk.0.ffn_down_exps.weight"
        name = "blk.0.attn_q.weight"
        bigger = Imatrix(entries={name: Entry.from_arrays(name, np.ones((1, 64), np.float32), [3.0])},
                         datasets=["b2.txt"], chunk_count=3, chunk_size=512)
        save(bigger, b, force=True)  # another size: the lazy reader's stamp no longer matches
        await pilot.press("down")
        title = screen.query_one("#diff-detail-title", Static)
        await _until(pilot, lambda: "being rewritten" in str(title.render()))
        text = str(title.render())
        assert text.startswith(name) and "file is being rewritten…" in text
        assert screen.error is None
        assert not any(n.severity == "error" for n in app._notifications)
        assert app.is_running and app.screen is screen


async def test_status_line_says_when_the_compare_loops_are_loading(monkeypatch):
    """Before its first big diff in a process the screen loads numba's compiled loops (~3 s after an
    install, while they compile): the status line says so, and then the diff fills the table."""
    import threading

    from imatui.stats import compare, diff

    release = threading.Event()
    real = compare.load

    def slow_load() -> None:  # a compile that takes until the test has looked
        release.wait(30)
        real()

    monkeypatch.setattr(diff, "COMPILED_MIN_PAIRS", 0)  # as for two big files: the compiled loops
    monkeypatch.setattr(compare, "loaded", lambda: False)
    monkeypatch.setattr(compare, "load", slow_load)
    app = _Host(PROSE, CODE)
    async with app.run_test(size=(120, 40)) as pilot:
        await _until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))
        status = pilot.app.screen.query_one("#diff-status", Static)
        await _until(pilot, lambda: "loading the compare loops" in str(status.render()))
        assert pilot.app.screen.report is None
        release.set()
        screen = await _ready(pilot)
        assert screen.report is not None and len(screen.report.tensors) == 210
        assert "loading" not in str(status.render())
