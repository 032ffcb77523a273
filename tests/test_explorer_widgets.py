"""The explorer's second pass (issue 12), widget by widget: what the screen shows after a sort, the
fixed key columns, the column sets, copying, first/last row, the per-layer bars, one number format,
NO_COLOR flags, SVGs that keep their spaces, the file browser's labels, collect's chunk warning.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from rich.style import Style
from textual.app import App

from imatui import numfmt
from imatui.collect.chunks import make_chunks, shortfall
from imatui.formats.write import save
from imatui.imatrix import Entry, Imatrix
from imatui.tui.app import make_app
from imatui.tui.screens.convergence import _cos_text
from imatui.tui.screens.diff import DiffScreen
from imatui.tui.svg import preserve_spaces, screen_text
from imatui.tui.widgets.channel_plot import DetailPane
from imatui.tui.widgets.file_browser import ImatrixTree, file_label, middle_truncate
from imatui.tui.widgets.layer_sparklines import (LayerBars, LayerMarker, LayerSparklines, bar_heights,
                                                 layer_geometry)
from imatui.tui.widgets.stats_table import tensor_type_fragment

from conftest import FIXTURES, wait_until

DEMO = Path(__file__).parent.parent / "imatui" / "data" / "demo.imatrix.gguf"
PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
CODE = FIXTURES / "smollm2-code.imatrix.gguf"
DEEPSEEK = FIXTURES / "moe" / "deepseekv3-tiny.imatrix.gguf"
OUTLIERS = ["20573.37", "18920.04", "13916.92"]  # the demo's three ffn_down tensors, Σ


def _table_text(app, table) -> str:
    """The screen lines the table covers (its header and visible rows)."""
    top = table.region.y
    return "\n".join(screen_text(app).splitlines()[top:top + table.region.height])


async def _loaded(app, pilot) -> None:
    await app.wait_for_data()
    await pilot.pause()


# --- the tensor table ---------------------------------------------------------------------------

async def test_first_view_and_sort_show_the_top_of_the_order():
    app = make_app([str(DEMO)])
    async with app.run_test(size=(120, 40)) as pilot:
        await _loaded(app, pilot)
        table = app.tensor_table
        # the first view: largest Σ first, the three outliers on screen
        assert table.sort_column == "sum" and "Σ(Act²)▼" in _table_text(app, table)
        assert all(v in _table_text(app, table) for v in OUTLIERS)
        await pilot.press("S")  # Kind (llama's order): the outliers are far down
        table.move_cursor(row=58)  # far down (sixty key presses took twelve seconds), the last two by key
        await pilot.press("down", "down")
        await pilot.pause()
        assert table.cursor_row == 60
        name = table.selected_key
        assert not any(v in _table_text(app, table) for v in OUTLIERS)
        await pilot.press("s")  # back to Σ▼ with the cursor far down the list
        await pilot.pause()
        await pilot.pause()
        assert table.sort_column == "sum" and table.selected_key == name  # the cursor kept its tensor
        assert table.cursor_row >= 20 and table.scroll_y == 0
        text = _table_text(app, table)
        assert all(v in text for v in OUTLIERS)  # ... and the view shows the top of the new order


async def test_key_columns_fixed_and_column_sets_at_120():
    app = make_app([str(DEEPSEEK)])
    async with app.run_test(size=(120, 40)) as pilot:
        await _loaded(app, pilot)
        table = app.tensor_table
        assert table.fixed_columns == 2
        header = screen_text(app).splitlines()[1]
        # the compact set: the MoE and the never-reached counts are on screen at 120 columns
        for label in ("Layer", "Kind", "Σ(Act²)", "Max/μ", "CosSim", "Dead", "Unused", "Tokens"):
            assert label in header
        assert "Entropy" not in header
        # a palette sort by a column outside the set brings it in; the names stay
        app.main.sort_by("entropy")
        await pilot.pause()
        assert "entropy" in table.shown_columns and "ffn_gate_exps" in screen_text(app)
        await pilot.press("a")  # every column
        assert table.shown_columns == [c.key for c in table.spec]
        table.scroll_to(x=table.max_scroll_x, animate=False)
        await pilot.pause()
        assert table.scroll_x > 0
        lines = screen_text(app).splitlines()
        assert lines[1].split()[:2] == ["Layer", "Kind"] and "Tokens" in lines[1]
        row = lines[2].split()
        assert row[0].isdigit() and row[1] == table.objects[table.shown_keys[0]].kind
        await pilot.press("a")
        assert "entropy" in table.shown_columns and "kurtosis" not in table.shown_columns


async def test_home_end_g_G_and_copy_keys():
    app = make_app([str(DEMO)])
    async with app.run_test(size=(120, 40)) as pilot:
        await _loaded(app, pilot)
        table = app.tensor_table
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1 and table.scroll_x == 0
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("G")
        assert table.cursor_row == table.row_count - 1
        await pilot.press("g")
        assert table.cursor_row == 0 and table.selected_key == "blk.29.ffn_down.weight"
        await pilot.press("y")
        assert app.clipboard == "blk.29.ffn_down.weight"
        assert any(n.title == "copied name" for n in app._notifications)
        await pilot.press("o")
        assert app.clipboard == r"--tensor-type 'blk\.29\.ffn_down=q8_0'"
        await pilot.press("Y")
        assert app.clipboard.split("\t")[:4] == ["blk.29.ffn_down.weight", "Layer=29", "Kind=ffn_down",
                                                 "Σ(Act²)=20573.37"]
        bindings = {b.id: b for b in table.BINDINGS}
        assert bindings["table.copy_name"].tooltip and bindings["table.columns"].tooltip


def test_tensor_type_fragment():
    assert tensor_type_fragment("blk.1.attn_q.weight") == r"--tensor-type 'blk\.1\.attn_q=q8_0'"
    assert tensor_type_fragment("output.weight", "q6_k") == "--tensor-type 'output=q6_k'"


# --- the diff -----------------------------------------------------------------------------------

class _Diff(App):
    def __init__(self, a: Path, b: Path) -> None:
        super().__init__()
        self.a, self.b = str(a), str(b)

    def on_mount(self) -> None:
        self.push_screen(DiffScreen(self.a, self.b))


async def _diff_ready(app, pilot) -> DiffScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, DiffScreen) and app.screen.report is not None, 60)
    await pilot.pause()
    return app.screen


async def test_diff_sort_shows_top_and_name_stays_fixed():
    app = _Diff(PROSE, CODE)
    async with app.run_test(size=(80, 40)) as pilot:
        screen = await _diff_ready(app, pilot)
        table = screen.query_one("#diff-table")
        assert table.fixed_columns == 1 and table.max_scroll_x > 0
        table.move_cursor(row=48)  # far down (fifty key presses took ten seconds), the last two by key
        await pilot.press("down", "down")
        await pilot.pause()
        assert table.cursor_row == 50
        name = screen._cursor_name()
        await pilot.press("s")  # CosSim -> JS
        await pilot.pause()
        await pilot.pause()
        assert screen.sort_column == "js" and screen._cursor_name() == name
        assert table.scroll_y == 0 and table.cursor_row > 10
        first = screen.shown[0].name
        assert first in _table_text(app, table)
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1
        await pilot.press("g")
        assert table.cursor_row == 0
        table.scroll_to(x=table.max_scroll_x, animate=False)
        await pilot.pause()
        assert table.scroll_x > 0 and first in _table_text(app, table)  # the name column stays
        assert "Note" in _table_text(app, table)
        await pilot.press("y")
        assert app.clipboard == first


async def test_flags_visible_under_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = _Diff(PROSE, CODE)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await _diff_ready(app, pilot)
        assert app.no_color
        low = next(t for t in screen.shown if t.cossim is not None and t.cossim < 0.5)
        cell = screen.query_one("#diff-table").get_cell(low.name, "cossim")
        style = Style.parse(str(cell.style))
        assert style.reverse and style.bold
        assert Style.parse(str(_cos_text(0.5, 4, app).style)).reverse
    monkeypatch.delenv("NO_COLOR")
    app = _Diff(PROSE, CODE)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await _diff_ready(app, pilot)
        low = next(t for t in screen.shown if t.cossim is not None and t.cossim < 0.5)
        assert str(screen.query_one("#diff-table").get_cell(low.name, "cossim").style) == "bold red"


# --- per-layer bars -----------------------------------------------------------------------------

def _gemma_like(tmp_path: Path) -> Path:
    """Layer 0 a decade above the rest (as Gemma 3's first block), the rest varying by 2x."""
    rng = np.random.default_rng(3)
    entries = {}
    for layer in range(12):
        scale = 100.0 if layer == 0 else 1.0 + layer / 11
        for kind in ("attn_q", "ffn_down"):
            name = f"blk.{layer}.{kind}.weight"
            sums2 = (rng.random(64) + 0.5) * scale * 10
            entries[name] = Entry.from_arrays(name, sums2.astype(np.float32), np.array([10.0]))
    im = Imatrix(entries=dict(sorted(entries.items())), datasets=["t.txt"], chunk_count=1, chunk_size=10)
    return save(im, tmp_path / "gemma-like.imatrix.gguf")


def test_geometry_and_heights():
    assert layer_geometry(30, 64) == (2, 1, 60)
    assert layer_geometry(61, 20) == (1, 4, 16)
    # layer 0 ten times the rest: linear squeezes the rest to the floor, log spreads them
    values = [100.0] + [1.0 + i / 10 for i in range(10)]
    linear, log = bar_heights(values, 24, False), bar_heights(values, 24, True)  # 3 lines of bars
    assert len(set(linear[1:])) == 1 and len(set(log[1:])) >= 4
    # a missing layer has no bar, the lowest present value has one
    assert bar_heights([None, 2.0, 4.0], 8, False) == [None, 1, 8]
    # 64.00 in every layer but for float noise (RMS-normed inputs): flat, not a full-height swing
    assert bar_heights([64.0, 63.99, 64.0, None], 8, False) == [4, 4, 4, None]


async def test_sparklines_log_missing_layers_folding_and_marker(tmp_path):
    app = make_app([str(_gemma_like(tmp_path))])
    async with app.run_test(size=(120, 40)) as pilot:
        await _loaded(app, pilot)
        sparks = app.query_one(LayerSparklines)
        assert sparks.log_scale and "log" in sparks.query_one("#spark-title").render().plain
        bars = sparks.query(LayerBars).first()
        cells = bars.cells()
        per, _, drawn = layer_geometry(12, bars.size.width)
        assert len(cells) == drawn == 12 * per
        assert len({cells[i * per] for i in range(1, 12)}) >= 4  # the rest of the depth is not flat
        sparks.set_scale("linear")
        await pilot.pause()
        assert not sparks.log_scale
    app = make_app([str(DEEPSEEK)])
    async with app.run_test(size=(120, 40)) as pilot:
        await _loaded(app, pilot)
        sparks = app.query_one(LayerSparklines)
        rows = dict(zip(sparks._labels, sparks._sparks))
        # the dense ffn_down exists in layer 0 only: nothing is drawn for layers 1-3
        ffn_down = rows["ffn_down"]
        per, _, drawn = layer_geometry(4, ffn_down.size.width)
        cells = ffn_down.cells()
        assert all(c is not None for c in cells[:per]) and all(c is None for c in cells[per:drawn])
        line = ffn_down.render().plain.splitlines()[0]
        assert line[per:drawn].strip() == ""
        # identical kinds fold into one row
        assert "ffn_gate_exps/up_exps" in sparks._labels and "ffn_gate_exps" not in sparks._labels


def test_marker_never_runs_into_the_axis_labels():
    # the MoE axis read "▲5160" (the marker over "0" and "15"); at any layer and width now
    for n, width in ((4, 28), (16, 32), (30, 30), (61, 40), (6, 13)):
        for layer in range(n):
            text = _marker_text(n, width, layer)
            caret = text.index("▲")
            after = caret + 1 + len(str(layer))
            assert text[caret + 1:after] == str(layer)
            assert after >= len(text) or text[after] == " "
            assert caret == 0 or text[caret - 1] == " "
    assert _marker_text(16, 32, 5).split() == ["0", "▲5", "15"]


def _marker_text(n: int, width: int, layer: int) -> str:
    class Sized(LayerMarker):
        @property
        def size(self):  # type: ignore[override]
            from textual.geometry import Size
            return Size(width, 1)

    m = Sized()
    m.n_layers, m.selected_layer = n, layer  # set() refreshes: it needs a mounted widget
    return m.render().plain


async def test_prose_rows_fold_and_numbers_read_the_same_everywhere():
    app = make_app([str(PROSE)])
    async with app.run_test(size=(160, 50)) as pilot:
        await _loaded(app, pilot)
        sparks = app.query_one(LayerSparklines)
        assert sparks._labels == ["attn_k/q/v", "attn_output", "ffn_down", "ffn_gate/up"]
        table = app.tensor_table
        name = table.selected_key
        t = table.objects[name]
        assert t.kind == "ffn_down"
        await app.wait_for_data()
        await pilot.pause()
        # Σ: the table cell, the sparkline value at the selected layer, numfmt: one text
        assert table.cell_text(name, "sum") == sparks.values_at_selected_layer()["ffn_down"] == numfmt.sum2(t.sum)
        # a channel value: the Max cell and the detail pane's top channel (the max) alike
        top = app.query_one(DetailPane).query_one("#detail-top").render().plain
        assert table.cell_text(name, "max") == numfmt.value(t.max) and f" {numfmt.value(t.max)} (" in top
        plot = app.query_one("#plot-sorted").render().plain
        axis = plot.splitlines()[-1].split()
        assert all(tick.isdigit() for tick in axis)  # whole channel numbers
        ticks = [line.split("┤")[0].strip() for line in plot.splitlines() if "┤" in line]
        assert ticks and all(numfmt.tick(float(x)) == x for x in ticks)  # round powers of ten


def test_numfmt():
    assert numfmt.sum2(188795.918) == "188795.92" and numfmt.sum2(3.2e-5) == "3.2e-05"
    assert numfmt.sum2(None) == "-" and numfmt.sum2(float("nan")) == "-"
    assert numfmt.value(51.23994) == "51.2399" and numfmt.percent(0.0427) == "4.27%"
    assert numfmt.signed(numfmt.sum2)(4.84) == "+4.84" and numfmt.signed(numfmt.sum2)(-4.84) == "-4.84"
    assert [numfmt.tick(v) for v in (1e-4, 0.001, 0.1, 1, 10, 1000, 1e4, 1e5)] == \
        ["1e-4", "0.001", "0.1", "1", "10", "1000", "1e4", "1e5"]
    assert numfmt.log_ticks(0.07, 1087) == [0.1, 1, 10, 100, 1000]
    assert numfmt.log_ticks(1e-6, 1e6, most=4) == [1e-6, 1e-2, 1e2, 1e6]


# --- SVG ------------------------------------------------------------------------------------------

def test_svg_keeps_leading_spaces(tmp_path):
    from imatui.tui.headless import render_screenshot

    out = render_screenshot(PROSE, tmp_path / "shot.svg", size=(100, 30))
    svg = out.read_text()
    assert svg.count('xml:space="preserve"') == 1 and svg.index('xml:space="preserve"') < svg.index(">")
    assert preserve_spaces(svg) == svg  # once only
    assert preserve_spaces('<svg class="a"><text> 1</text></svg>') == \
        '<svg xml:space="preserve" class="a"><text> 1</text></svg>'


# --- the file browser ---------------------------------------------------------------------------

def test_browser_labels():
    cut = middle_truncate("smollm2-prose.imatrix.gguf.at_10", 16)
    assert len(cut) == 16 and cut.endswith(".at_10") and cut.startswith("smollm2")
    label = file_label("smollm2-prose.imatrix.gguf.at_10", ["617K", "40ch", "3m"], 50, is_open=True)
    assert label.plain.startswith("● smollm2-prose.imatrix.gguf.at_10") and label.plain.endswith("617K 40ch 3m")
    assert len(label.plain) == 50
    narrow = file_label("smollm2-prose.imatrix.gguf.at_10", ["617K", "40ch", "3m"], 24).plain
    assert narrow.endswith(".at_10 617K") or narrow.endswith("at_10")


async def test_browser_shows_snapshots_apart_with_details(tmp_path):
    for n in (10, 20, 30):
        shutil.copy(PROSE, tmp_path / f"smollm2-prose.imatrix.gguf.at_{n}")
    shutil.copy(PROSE, tmp_path / "smollm2-prose.imatrix.gguf")
    app = make_app([str(tmp_path)])
    async with app.run_test(size=(120, 30)) as pilot:
        tree = app.query_one(ImatrixTree)
        await wait_until(pilot, lambda: len(tree.root.children) == 4, 20)
        await pilot.pause()
        lines = [line for line in screen_text(app).splitlines()[2:6]]
        names = [line.split("▕")[0] for line in lines]
        assert all("617K" in n and "40ch" in n for n in names)
        for n in (10, 20, 30):
            assert sum(f"at_{n}" in line for line in names) == 1
        await app.wait_for_data()  # a folder of one collection opens its main file, marked when shown
        tree.set_open_file(tmp_path / "smollm2-prose.imatrix.gguf.at_20")
        await pilot.pause()
        marked = [line for line in screen_text(app).splitlines()[1:] if "●" in line.split("▕")[0]]
        assert len(marked) == 1 and "at_20" in marked[0]


# --- collect --------------------------------------------------------------------------------------

def test_collect_warns_when_the_text_is_short():
    chunks = make_chunks(np.arange(9 * 64 + 10), 64, 40, False, None)
    assert chunks.n_chunk == 9
    assert shortfall(40, chunks) == ("warning: --chunks 40 asked for more than the text holds: 586 tokens "
                                     "make 9 chunks of 64; collecting 9")
    assert shortfall(9, chunks) is None and shortfall(-1, chunks) is None and shortfall(None, chunks) is None

