"""The explorer, driven through Textual's Pilot against the fixtures.

Cell texts are compared with the numbers imatui.stats computes (and, for a few rows, with what
llama-imatrix printed for the same file), so a wrong column or a stale reload fails here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import ContentSwitcher, Input

from imatui.formats import load
from imatui.formats.write import save
from imatui.imatrix import Entry, Imatrix
from imatui.live.state import LiveState
from imatui.printers import _pct
from imatui.stats import compute_stats
from imatui.tui.app import ImatuiApp, make_app
from imatui.tui.messages import DataLoaded
from imatui.tui.widgets.channel_plot import DetailPane, PlotView
from imatui.tui.widgets.file_browser import ImatrixTree
from imatui.tui.widgets.info_bar import InfoBar
from imatui.tui.widgets.layer_sparklines import LayerBars, LayerMarker, LayerSparklines, layer_columns

from conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
SIZE = (120, 36)


@pytest.fixture(scope="module")
def prose_report():
    return compute_stats(load(PROSE))


def _info(app: ImatuiApp) -> str:
    return app.query_one(InfoBar).render().plain


async def test_table_matches_stats(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        table = app.tensor_table
        assert table.row_count == 210
        # the outliers first: Σ descending until the user sorts (llama's order is `S` away: Kind)
        assert table.shown_keys == [t.name for t in sorted(prose_report.tensors, key=lambda t: -t.sum)]
        await pilot.press("a")  # every column
        for t in prose_report.tensors[::17]:
            assert table.cell_text(t.name, "sum") == "%.2f" % t.sum
            assert table.cell_text(t.name, "max") == "%.4f" % t.max
            assert table.cell_text(t.name, "active") == "%.2f%%" % _pct(t.active)
            assert table.cell_text(t.name, "zd") == "%.2f%%" % _pct(t.zd)
            assert table.cell_text(t.name, "dead") == str(t.dead)
        # the row llama-imatrix printed for this file: "18  attn_k  95.22  0.0073  51.2399 ... 0.9993"
        name = "blk.18.attn_k.weight"
        assert [table.cell_text(name, c) for c in ("layer", "kind", "sum", "min", "max", "cossim")] == \
            ["18", "attn_k", "95.22", "0.0073", "51.2399", "0.9993"]
        info = _info(app)
        assert "smollm2-prose.imatrix.gguf" in info and "GGUF" in info
        assert "210 tensors" in info and "40 × 512" in info and "prose.txt" in info


async def test_sort_reverse_and_header_click(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        table = app.tensor_table
        assert table.sort_column == "sum"  # the default
        by_sum = sorted(prose_report.tensors, key=lambda t: t.sum, reverse=True)
        assert table.shown_keys[:3] == [t.name for t in by_sum[:3]]
        assert str(table.columns["sum"].label).endswith("▼")
        await pilot.press("r")
        assert table.shown_keys[0] == by_sum[-1].name
        assert str(table.columns["sum"].label).endswith("▲")
        await pilot.press("S", "S")  # back past Kind to Layer
        assert table.sort_column == "layer"
        # clicking the Max header sorts by Max, descending
        x = sum(table.columns[k].get_render_width(table) for k in ("layer", "kind", "sum")) + 2
        await pilot.click("#tensors", offset=(x, 0))
        await pilot.pause()
        assert table.sort_column == "max"
        assert table.shown_keys[0] == max(prose_report.tensors, key=lambda t: t.max).name


async def test_keys_right_after_slash_go_to_the_filter_box(prose_report):
    """"/" and what follows it in one terminal read (a paste, fast typing) all reach the box: none of
    it lands in the table, where "b" would open the file browser."""
    from textual import events

    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        names = {"/": "slash", ".": "full_stop"}
        for ch in "/blk.1.":  # queued together, before the app handles the first
            app.post_message(events.Key(names.get(ch, ch), ch))
        await pilot.pause()
        box = app.query_one("#filter", Input)
        assert box.value == "blk.1."
        assert app.tensor_table.row_count == 7
        assert app.browser is None or not app.browser.display
        await pilot.press("slash", "x")  # inside the box "/" is text
        assert box.value == "blk.1./x" and app.tensor_table.row_count == 0


async def test_filter_substring_and_regex(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        table = app.tensor_table
        await pilot.press("slash")
        assert app.focused is app.query_one("#filter", Input)
        await pilot.press(*"ffn_down")
        assert table.row_count == 30
        assert all("ffn_down" in k for k in table.shown_keys)
        app.query_one("#filter", Input).value = r"^blk\.1\d\.attn_q"
        await pilot.pause()
        assert sorted(table.shown_keys) == sorted(f"blk.{i}.attn_q.weight" for i in range(10, 20))
        # "blk.1." is text, not a regex: blk.10 does not match
        app.query_one("#filter", Input).value = "blk.1."
        await pilot.pause()
        assert table.row_count == 7
        await pilot.press("enter")
        assert app.focused is table
        await pilot.press("escape")
        assert table.row_count == 210
        assert not app.query_one("#filter").display


async def test_cursor_moves_detail_and_layer_marker(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("down", "down")
        await app.wait_for_data()
        await pilot.pause()
        second = prose_report.tensor(app.tensor_table.shown_keys[2])
        assert app.selected_name == second.name
        detail = app.query_one(DetailPane)
        assert second.name in detail.query_one("#detail-title").render().plain
        assert "top channels" in detail.query_one("#detail-top").render().plain
        marker = app.query_one(LayerMarker)
        assert marker.selected_layer == second.layer
        assert f"▲{second.layer}" in marker.render().plain
        # the sorted-values plot is drawn (plotext frame and the title)
        plot = detail.query_one("#plot-sorted", PlotView).render().plain
        assert "channels sorted" in plot and "┌" in plot
        await pilot.press("j")  # vim alias
        assert app.selected_name == app.tensor_table.shown_keys[3]


def test_layer_columns_give_every_layer_the_same_cells():
    # 30 layers over 64 columns: two cells each, in order, 60 columns drawn
    cols = [layer_columns(30, 64, layer) for layer in range(30)]
    assert all(len(c) == 2 for c in cols) and cols[0] == [0, 1] and cols[29] == [58, 59]
    # 30 over 34: one cell each (never one layer with two and its neighbour with one)
    assert all(len(layer_columns(30, 34, layer)) == 1 for layer in range(30))
    # more layers than columns: each layer lands in exactly one cell, 4 layers a cell
    assert all(len(layer_columns(61, 20, layer)) == 1 for layer in range(61))
    assert layer_columns(61, 20, 7) == [1] and layer_columns(61, 20, 60) == [15]


async def test_metric_cycle_changes_sparklines(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        sparklines = app.query_one(LayerSparklines)
        first = sparklines.query(LayerBars).first()  # attn_k/q/v: one row
        attn_k = {t.layer: t for t in prose_report.tensors if t.kind == "attn_k"}
        assert list(first.data) == [attn_k[i].sum for i in range(30)]
        await pilot.press("m")
        assert sparklines.metric.key == "mean"
        assert list(first.data) == [attn_k[i].mean for i in range(30)]
        assert "μ" in sparklines.query_one("#spark-title").render().plain
        await pilot.press("M", "M")
        assert sparklines.metric.key == "dead"


async def test_layer_table_toggle(prose_report):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("t")
        assert app.query_one("#tables", ContentSwitcher).current == "layers"
        layers = app.layer_table
        assert layers.row_count == 30
        assert layers.cell_text("0", "sum") == "%.2f" % prose_report.layers[0].sum
        assert layers.cell_text("29", "zd") == "%.4f%%" % _pct(prose_report.layers[29].zd)
        await pilot.press("down", "down", "down")
        assert app.query_one(LayerMarker).selected_layer == 3
        await pilot.press("s")
        assert layers.sort_column == "sum"
        await pilot.press("t")
        assert app.query_one("#tables", ContentSwitcher).current == "tensors"


async def test_browser_lists_imatrix_files_and_opens_them(tmp_path):
    for name in ("smollm2-code.imatrix.gguf", "smollm2-prose.imatrix.dat", "smollm2-prose.imatrix.gguf.stats.txt"):
        (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
    (tmp_path / "notes.gguf").write_bytes(b"GGUF but not really")  # right name, wrong bytes
    snap = tmp_path / "run.gguf.at_10"
    snap.write_bytes((FIXTURES / "checkpoints" / "smollm2-prose.imatrix.gguf.at_10").read_bytes())
    app = make_app([str(tmp_path)])
    async with app.run_test(size=SIZE) as pilot:
        tree = app.query_one(ImatrixTree)
        assert tree.display and app.focused is tree
        assert "choose an imatrix file" in _info(app)
        for _ in range(100):
            await pilot.pause(0.05)
            if len(tree.root.children) >= 3:
                break
        names = [str(node.label) for node in tree.root.children]
        assert names == ["run.gguf.at_10", "smollm2-code.imatrix.gguf", "smollm2-prose.imatrix.dat"]
        await pilot.press("down", "down", "enter")  # the cursor starts on the root
        await app.wait_for_data()
        await pilot.pause()
        assert Path(app.current_path).name == "smollm2-code.imatrix.gguf"
        assert "smollm2-code.imatrix.gguf" in _info(app) and app.tensor_table.row_count == 210
        # open another file from the browser: the cursor stays on the same tensor name
        app.tensor_table.focus()
        await pilot.press("down", "down", "down")
        kept = app.selected_name
        tree.focus()
        await pilot.press("down", "enter")
        await app.wait_for_data()
        await pilot.pause()
        assert Path(app.current_path).name == "smollm2-prose.imatrix.dat"
        assert "DAT" in _info(app)
        assert app.selected_name == kept
        await pilot.press("b")
        assert not tree.display


async def test_browser_mounts_on_demand_and_diff_key(tmp_path):
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        assert app.browser is None  # not listed until asked for
        await pilot.press("d")  # no other file chosen yet: a hint, and the browser opens
        await pilot.pause()
        tree = app.browser
        assert tree is not None and tree.display and app.focused is tree
        assert any("select the other file" in n.message for n in app._notifications)
        for _ in range(100):
            await pilot.pause(0.05)
            if tree.root.children:
                break
        names = [str(n.label) for n in tree.root.children]
        target = names.index("smollm2-code.imatrix.gguf")
        for _ in range(target + 1):
            await pilot.press("down")
        assert tree.highlighted_file.name == "smollm2-code.imatrix.gguf"
        await pilot.press("d")
        await pilot.pause()
        from imatui.tui.screens.diff import DiffScreen

        assert isinstance(app.screen, DiffScreen)


async def test_reload_keeps_cursor_sort_and_filter():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        table = app.tensor_table
        await pilot.press("s")  # Σ -> Max
        assert table.sort_column == "max"
        app.query_one("#filter", Input).value = "attn"
        await pilot.pause()
        await pilot.press("down", "down", "down", "down")
        name = table.selected_key
        # the same file grew: what the watcher posts (same path, new numbers)
        other = load(FIXTURES / "smollm2-prose-4chunks.imatrix.gguf")
        report = compute_stats(other)
        app.post_message(DataLoaded(str(PROSE), other, report))
        await pilot.pause()
        await app.wait_for_data()
        assert table.sort_column == "max" and table.row_count == 120
        assert table.selected_key == name
        assert table.cell_text(name, "max") == "%.4f" % report.tensor(name).max
        assert "4 × 512" in _info(app)


async def test_narrow_terminal_and_views():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.size == (80, 24)
        assert not app.query_one("#detail").display or app.query_one("#detail").region.width == 0
        seen = []
        for _ in range(4):
            await pilot.press("v")
            await pilot.pause()
            seen.append(app.view)
            table = app.query_one("#tables")
            lower = app.query_one("#lower")
            if table.display and lower.display:
                assert not table.region.overlaps(lower.region)
        assert seen == ["table", "layers", "detail", "all"]
        # sorting by a column that is off screen at 80 columns scrolls it into view
        table = app.tensor_table
        assert table.scroll_x == 0
        await pilot.press("a")  # all columns: wider than 80
        await pilot.press("S", "S", "S")  # Σ -> Kind -> Layer -> (wrapping back) the last column
        await pilot.pause()
        last = list(table.columns)[-1].value
        assert table.sort_column == last and table.scroll_x > 0
        await pilot.press("enter")  # Enter on a tensor: the detail view, and back
        assert app.view == "detail"
        await pilot.press("enter")
        assert app.view == "all"
        await pilot.press("v", "v", "v")  # detail at 80x24: the plots get the width
        await app.wait_for_data()
        await pilot.pause()
        assert app.query_one("#detail").region.width == 80
        await pilot.resize_terminal(200, 60)
        await pilot.pause()
        assert app.query_one("#plot-sorted").region.width > 40


async def test_screenshot_key_writes_svg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("p")
        await pilot.pause()
        svgs = list(tmp_path.glob("imatui-smollm2-prose.imatrix.gguf-*.svg"))
        assert len(svgs) == 1
        text = svgs[0].read_text()
        assert text.startswith("<svg") and "attn_k" in text
        assert any(str(svgs[0]) in n.message for n in app._notifications)


async def test_bad_file_is_a_notification_and_app_keeps_running(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(PROSE.read_bytes()[:5000])
    # written long ago, so not a file being written: the watcher reports it at its first look
    # (a fresh one is "writing…" until it has not changed for SETTLE_S: test_live_app.py)
    old = time.time() - 60
    os.utime(bad, (old, old))
    app = make_app([str(bad)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await _until(pilot, lambda: app.load_errors)
        await pilot.pause()
        assert len(app.load_errors) == 1 and str(bad) in app.load_errors[0]
        assert any(n.severity == "error" for n in app._notifications)
        assert "cannot open" in _info(app)
        # still usable: open a good file in place
        app.open_path(str(PROSE))
        await app.wait_for_data()
        await pilot.pause()
        assert app.tensor_table.row_count == 210 and "cannot open" not in _info(app)
        # a bad file opened over a good one: the good one stays, and the header still names it
        app.open_path(str(bad))
        await app.wait_for_data()
        await _until(pilot, lambda: len(app.load_errors) == 2)
        await pilot.pause()
        assert len(app.load_errors) == 2
        assert app.current_path == str(PROSE) and "smollm2-prose.imatrix.gguf" in _info(app)
        assert "broken.gguf" not in _info(app) and app.tensor_table.row_count == 210


async def _until(pilot, condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


async def test_header_tick_after_shutdown_is_harmless():
    """The watcher's 1-second header timer ticking once Textual has cleared the screen stack."""
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await _until(pilot, lambda: app.open_file.status == "idle")
        assert app.open_file._timer is not None
    assert app.screen_stack == [] and app.open_file.status == "idle"
    app.open_file._tick()  # raised IndexError (screen_stack[0]) before
    app.open_file._set_state(LiveState.WRITING)
    app.set_live_status("live")
    assert app.open_file._timer is None  # stopped on unmount


async def test_missing_file_waits(tmp_path):
    app = make_app([str(tmp_path / "later.gguf")])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "waiting for later.gguf" in _info(app)
        assert "waiting for" in str(app.main_screen.query_one("#placeholder").render())
        assert not app.main_screen.query_one("#tables").display
        assert app.load_errors == []
        app.set_live_status("live")
        await pilot.pause()
        assert _info(app).rstrip().endswith("● live")


async def test_help_screen_and_palette_commands():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("question_mark")
        from imatui.tui.screens.help import HelpScreen

        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("view: per-layer table", "sort: by Σ(Act²)", "metric: ZD %", "sort: reverse",
                      "screenshot: save SVG here", "diff: with the file selected in the browser"):
            assert title in titles
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "metric: CosSim")
        command.callback()
        assert app.query_one(LayerSparklines).metric.key == "cossim"


async def test_moe_tensor_columns_and_expert_plot(tmp_path):
    rng = np.random.default_rng(3)
    entries = {}
    for layer in range(3):
        counts = np.array([40.0, 0.0, 12.0, 7.0])
        sums2 = rng.random((4, 16)).astype(np.float32) * counts[:, None].astype(np.float32)
        name = f"blk.{layer}.ffn_down_exps.weight"
        entries[name] = Entry.from_arrays(name, sums2, counts)
        dense = f"blk.{layer}.attn_q.weight"
        entries[dense] = Entry.from_arrays(dense, rng.random((1, 16)).astype(np.float32) * 59, np.array([59.0]))
    im = Imatrix(entries=dict(sorted(entries.items())), datasets=["moe.txt"], chunk_count=3, chunk_size=20)
    path = save(im, tmp_path / "moe.imatrix.gguf")
    app = make_app([str(path)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        table = app.tensor_table
        assert "experts_unused" in [c.key for c in table.spec]
        assert table.cell_text("blk.1.ffn_down_exps.weight", "experts_unused") == "1"
        app.query_one("#filter", Input).value = "exps"
        await pilot.pause()
        await pilot.press("down")
        await app.wait_for_data()
        await pilot.pause()
        detail = app.query_one(DetailPane)
        assert detail.has_class("-moe")
        assert "tokens per expert (1 unused)" in detail.query_one("#plot-experts", PlotView).render().plain
        assert "e0:" in detail.query_one("#detail-top").render().plain or \
            "e2:" in detail.query_one("#detail-top").render().plain


async def test_snapshot_series_opens_the_newest_and_lists_the_rest():
    snaps = [FIXTURES / "checkpoints" / f"smollm2-prose.imatrix.gguf.at_{n}" for n in (10, 20, 30)]
    app = make_app([str(p) for p in snaps])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        assert Path(app.current_path).name.endswith(".at_30")
        assert "30 × 512" in _info(app)
        tree = app.browser
        assert tree is not None and tree.display
        for _ in range(100):
            await pilot.pause(0.05)
            if len(tree.root.children) >= 4:
                break
        assert [str(n.label) for n in tree.root.children][:3] == [p.name for p in snaps]


async def test_diff_with_pushes_the_diff_screen():
    from imatui.tui.screens.diff import DiffScreen

    app = make_app([str(PROSE)], diff_with=str(FIXTURES / "smollm2-code.imatrix.gguf"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, DiffScreen)


def test_cli_screenshot_writes_svg_and_refuses_bad_input(tmp_path, capsys):
    from imatui.cli import main

    out = tmp_path / "shot.svg"
    assert main(["screenshot", str(PROSE), "-o", str(out), "--size", "100x30", "--view", "layers"]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "μΣ(Act²)" in svg and "ffn_down" in svg
    assert main(["screenshot", str(PROSE), "-o", str(out)]) == 2  # exists, no --force
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert main(["screenshot", str(bad), "-o", str(tmp_path / "b.svg")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(bad) in err
    assert not (tmp_path / "b.svg").exists()


async def test_messages_while_another_screen_is_on_top():
    """A reload (the watcher's DataLoaded) or the detail reader finishing while help or diff is
    shown must update the main view underneath, not look for it on the screen on top."""
    from imatui.tui.screens.help import HelpScreen

    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        other = load(FIXTURES / "smollm2-prose-4chunks.imatrix.gguf")
        app.post_message(DataLoaded(str(PROSE), other, compute_stats(other)))
        await pilot.press("s", "m")  # main-view keys do nothing under the help screen
        await app.wait_for_data()
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert app.tensor_table.sort_column == "sum"
        assert app.main_screen.query_one(LayerSparklines).metric.key == "sum"
        await pilot.press("escape")
        assert "4 × 512" in _info(app)


def test_channel_summary_is_what_the_plots_drew_from_the_full_vector():
    """The detail pane's sort/thin/histogram runs in the reader worker (summarize_channels); the
    histogram by binary search equals np.histogram of every value, at every bin count drawn."""
    from imatui.tui.widgets.channel_plot import MAX_POINTS, _thin, summarize_channels

    rng = np.random.default_rng(7)
    values = rng.lognormal(-3, 2, size=1_800_000)  # a DeepSeek-size MoE tensor
    values[::1000] = 0.0
    values[5] = np.nan
    s = summarize_channels(values)
    positive = np.sort(values[values > 0])[::-1]
    assert s.dead == 1800 and s.positive == len(positive) == 1_800_000 - 1801
    assert len(s.x) <= MAX_POINTS and (s.x, s.y) == _thin(positive)
    logs = np.log10(positive)
    for bins in range(5, 41):
        counts, edges = np.histogram(logs, bins=bins, range=(float(logs.min()), float(logs.max())))
        centers, got = s.histogram(bins)
        assert got == counts.tolist() and centers == ((edges[:-1] + edges[1:]) / 2).tolist()
    flat = summarize_channels(np.full(10, 0.5))  # one value: a range of 1 from it, as before
    lo = float(np.log10(0.5))
    counts, edges = np.histogram(np.full(10, lo), bins=5, range=(lo, lo + 1.0))
    assert counts.tolist() == [10, 0, 0, 0, 0]
    assert flat.histogram(5) == (((edges[:-1] + edges[1:]) / 2).tolist(), [10, 0, 0, 0, 0])


async def test_channels_posted_to_the_ui_are_already_sorted_and_thinned():
    from imatui.tui.messages import ChannelsReady
    from imatui.tui.widgets.channel_plot import ChannelSummary

    messages: list = []
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        ready = [m for m in messages if isinstance(m, ChannelsReady)]
        assert ready and isinstance(ready[-1].summary, ChannelSummary)
        name = ready[-1].name
        entry = app.imatrix.entries[name]
        assert ready[-1].summary.positive == int((entry.sums2 > 0).sum())
        assert ready[-1].summary.y[0] == pytest.approx(float((entry.sums2 / entry.counts[:, None]).max()))
