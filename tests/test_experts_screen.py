"""The expert map (x) driven through Textual's pilot, on the MoE fixtures and a DeepSeek-sized layout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from textual.app import App
from textual.widgets import DataTable, Static

from imatui.formats import load
from imatui.imatrix import Entry, Imatrix
from imatui.stats.experts import RareThreshold, coverage
from imatui.tui.app import make_app
from imatui.tui.screens.experts import ExpertMap, ExpertsScreen, columns_for

MOE = Path(__file__).parent / "fixtures" / "moe"
DEEPSEEK = MOE / "deepseekv3-tiny.imatrix.gguf"
QWEN = MOE / "qwen3moe-tiny.imatrix.gguf"


class _Host(App):
    def __init__(self, imatrix: Imatrix) -> None:
        super().__init__()
        self.imatrix = imatrix

    def on_mount(self) -> None:
        self.push_screen(ExpertsScreen(self.imatrix))


async def _until(pilot, condition, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "timed out"
        await pilot.pause(0.02)


def _rows(screen: ExpertsScreen) -> list[str]:
    return screen.query_one(ExpertMap).plain_lines()


def _text(screen: ExpertsScreen, widget_id: str) -> str:
    return str(screen.query_one(widget_id, Static).render())


def _detail_for(screen: ExpertsScreen, layer: int, expert: int) -> bool:
    """The detail of this expert is computed and drawn (its text follows the data by a message: CI
    once read the first line alone)."""
    d = screen.detail
    if d is None or (d.layer, d.expert) != (layer, expert):
        return False
    lines = _text(screen, "#exp-detail-text").split("\n")
    return lines[0].startswith(f"blk.{layer} expert {expert} ") and len(lines) > 1 and "Σ" in lines[1]


def _synthetic(n_layers: int = 58, n_experts: int = 256, n_in: int = 4) -> Imatrix:
    """DeepSeek's layout (3 dense blocks, then n_layers MoE blocks) with small rows."""
    rng = np.random.default_rng(0)
    entries = {}
    for layer in range(3, 3 + n_layers):
        counts = rng.integers(50, 5000, n_experts).astype(np.float64)
        counts[(layer * 7) % n_experts] = 0  # one dead expert per layer, at a known place
        counts[(layer * 11 + 1) % n_experts] = 2  # and one rare
        sums2 = rng.random((n_experts, n_in)).astype(np.float32) * counts[:, None]
        for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            name = f"blk.{layer}.{kind}.weight"
            entries[name] = Entry.from_arrays(name, sums2, counts)
        name = f"blk.{layer}.ffn_up_shexp.weight"
        entries[name] = Entry.from_arrays(name, np.ones(n_in, np.float32), np.array([1000.0]))
    return Imatrix(entries=dict(sorted(entries.items())), chunk_count=100)


async def test_map_of_deepseek_at_80x24():
    app = _Host(load(DEEPSEEK))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _until(pilot, lambda: _detail_for(screen, 1, 0))
        rows = _rows(screen)
        # blk.1 counts: 1335 792 0 604 1865 708 583 0 1511 612 20 976 838 506 1019 919 (6…2601, log)
        cells = ["█▇×▇█▇▇×█▇!▇▇▆▇▇", "×▄█▇▇×▇▇▇×▇█▇!▇▇", "▆▇▇!▇▇██!▇▆▇▇▇×█"]
        # 16 experts in 69 columns: 4 columns each
        want = [f"blk {b}  S " + "".join(c * 4 for c in row) for b, row in zip((1, 2, 3), cells)]
        want[0] = "blk 1  S  ◆  " + want[0][13:]  # the cursor, on blk.1 expert 0
        assert rows[1:] == want
        assert rows[0].startswith("expert   0       2       4")
        header = _text(screen, "#exp-header")
        assert header.split("\n")[0] == "3×16 experts · 6 dead · 4 rare (<10% mean) · +142 chunks (blk.2 e13)"
        detail = _text(screen, "#exp-detail-text")
        assert detail.split("\n")[0] == ("blk.1 expert 0 · 1335 tokens · 10.86% of the layer (mean 768.0) · "
                                         "the layer also has a shared expert")
        assert detail.split("\n")[1].startswith("ffn_up_exps  Σ 64.00 · max 2.1191 · μ 1.00")
        assert detail.split("\n")[2].startswith("top channels 7 2.1191 (3.3%) · 29 1.9242 (3.0%)")

        await pilot.press("down", "right", "right")  # blk.2 expert 2 ... then to the rare one, 13
        await _until(pilot, lambda: _detail_for(screen, 2, 2))
        for _ in range(11):
            await pilot.press("right")
        await _until(pilot, lambda: _detail_for(screen, 2, 13))
        detail = _text(screen, "#exp-detail-text")
        assert "blk.2 expert 13 · 6 tokens · 0.05% of the layer" in detail
        assert "RARE (< 10% of the layer mean: 76.8), ~142 more chunks at its rate" in detail.replace("\n", " ")
        assert screen.detail.stats.n == 64 and len(screen.detail.values) == 64

        await pilot.press("k")  # ffn_down_exps, its rows have 32 channels
        await _until(pilot, lambda: screen.detail is not None and "down" in screen.detail.tensor)
        assert screen.detail.tensor == "blk.2.ffn_down_exps.weight" and screen.detail.stats.n == 32

        await pilot.press("left", "left", "left", "left")  # expert 9: dead
        await _until(pilot, lambda: "expert 9 " in _text(screen, "#exp-detail-text"))
        assert "DEAD: never routed a token" in _text(screen, "#exp-detail-text")


async def test_threshold_keys_and_live_update():
    im = load(QWEN)
    app = _Host(im)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.screen
        await _until(pilot, lambda: screen.detail is not None)
        assert "100 chunks" not in _text(screen, "#exp-header")
        assert "4 layers × 16 experts · 12 chunks · 8 dead · 16 rare" in _text(screen, "#exp-header")
        await pilot.press("plus")
        await pilot.pause()
        want = coverage(im, RareThreshold(0.2)).rare
        assert screen.threshold == RareThreshold(0.2)
        assert f"8 dead · {want} rare (< 20% of the layer mean)" in _text(screen, "#exp-header")
        await pilot.press("minus", "minus")
        await pilot.pause()
        assert f"{coverage(im, RareThreshold(0.05)).rare} rare (< 5% of the layer mean)" in _text(screen, "#exp-header")

        # a new checkpoint of a live collection: blk.0's dead expert 3 gets tokens
        entries = dict(im.entries)
        for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            e = im[f"blk.0.{kind}.weight"]
            counts = np.array(e.counts)
            counts[3] = 900
            entries[e.name] = Entry.from_arrays(e.name, e.sums2, counts)
        before = _rows(screen)[1]
        screen.update_data(Imatrix(entries=entries, chunk_count=13), None)
        await pilot.pause()
        after = _rows(screen)[1]
        cw = screen.query_one(ExpertMap).cell_width()
        assert cw == 4  # 16 experts at 120 columns
        assert before[9 + 3 * cw] == "×" and after[9 + 3 * cw] != "×" and after[9 + 9 * cw] == "×"
        assert "7 dead" in _text(screen, "#exp-header") and "13 chunks" in _text(screen, "#exp-header")


async def test_256_experts_aggregate_at_80_and_200_columns():
    im = _synthetic()
    for size, group in (((80, 24), 4), ((200, 60), 2)):
        assert columns_for(256, size[0] - 2 - 9)[0] == group
        app = _Host(im)
        async with app.run_test(size=size) as pilot:
            screen = app.screen
            await _until(pilot, lambda: screen.detail is not None)
            rows = _rows(screen)
            m = screen.query_one(ExpertMap)
            assert m.geometry() == (group, 256 // group)
            shown = rows[1:]
            assert 0 < len(shown) < 58 and len(shown) == m.size.height - 1  # the rest scrolls
            assert all(len(r) == 9 + 256 // group for r in shown)
            for r in shown:
                layer = int(r[4:7])
                assert r[7] == "S"
                assert r[9 + ((layer * 7) % 256) // group] == "×"  # the dead expert's column
                rare_col = ((layer * 11 + 1) % 256) // group
                assert r[9 + rare_col] in "×!"  # rare unless it shares a column with the dead one
            legend = f"1 column = {group} experts (fewest shown)" if size[0] >= 120 else f"{group} experts/column"
            assert _text(screen, "#exp-header").split("\n")[1].endswith(legend)
            await pilot.press("end")  # the last layer scrolls into view
            await pilot.pause()
            assert _rows(screen)[-1].startswith("blk 60 ")


async def test_expert_table_sorts():
    app = _Host(load(DEEPSEEK))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.screen
        await _until(pilot, lambda: screen.detail is not None)
        await pilot.press("down", "t")  # blk.2's experts
        table = screen.query_one("#exp-table", DataTable)
        await _until(pilot, lambda: table.row_count == 16)
        assert [str(c) for c in table.get_row_at(0)][:4] == ["0", "0", "0.00%", ""]  # dead: no statistics
        assert str(table.get_row_at(13)[0]) == "13" and str(table.get_row_at(13)[-1]) == "rare"
        await pilot.press("s")  # by tokens, fewest first
        await pilot.pause()
        assert [str(table.get_row_at(i)[0]) for i in range(5)] == ["0", "5", "9", "13", "1"]
        assert "blk.2.ffn_up_exps.weight · 16 experts · sorted by tokens" in str(table.border_title)
        await pilot.press("r")
        await pilot.pause()
        assert [str(table.get_row_at(i)[1]) for i in range(2)] == ["2601", "1227"]


async def test_app_hook_opens_the_map_for_moe_files_only(prose):
    app = make_app([str(DEEPSEEK)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await pilot.press("x")
        await _until(pilot, lambda: isinstance(app.screen, ExpertsScreen))
        assert app.screen.coverage.dead == 6
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExpertsScreen)
    app = make_app([str(prose)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, ExpertsScreen)


async def test_diff_screen_compares_the_experts_of_a_moe_tensor(tmp_path):
    from imatui.formats.write import save
    from imatui.tui.screens.diff import DiffScreen

    im = load(QWEN)
    # B: blk.0's expert 12 loses its 3 tokens, expert 5's channels reversed
    entries = dict(im.entries)
    for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        e = im[f"blk.0.{kind}.weight"]
        sums2, counts = np.array(e.sums2), np.array(e.counts)
        counts[12], sums2[12] = 0, 0.0
        sums2[5] = sums2[5][::-1]
        entries[e.name] = Entry.from_arrays(e.name, sums2, counts)
    save(Imatrix(entries=entries, chunk_count=12), tmp_path / "b.gguf")

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(DiffScreen(str(QWEN), str(tmp_path / "b.gguf")))

    app = Host()
    async with app.run_test(size=(160, 40)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, DiffScreen) and app.screen.report is not None)
        screen = app.screen
        table = screen.query_one("#diff-table", DataTable)
        name = "blk.0.ffn_up_exps.weight"
        table.move_cursor(row=table.get_row_index(name))
        title = screen.query_one("#diff-detail-title", Static)
        await _until(pilot, lambda: "experts:" in str(title.render()))
        lines = str(title.render()).split("\n")
        orig = im[name].sums2[5].astype(np.float64)
        cos = float(orig @ orig[::-1] / (orig @ orig))
        assert lines[-2].startswith(f"experts: least similar {cos:.4f} (e5) · mean cos ")
        assert lines[-1].startswith("largest share shift e") and lines[-1].endswith("· dead only in B: 12")


async def test_a_reload_updates_the_map_and_convergence_names_the_slowest_experts():
    from imatui.stats import compute_stats
    from imatui.tui.messages import DataLoaded
    from imatui.tui.screens.convergence import ConvergenceScreen

    at4 = MOE / "deepseekv3-tiny.imatrix.gguf.at_4"
    app = make_app([str(at4), str(MOE / "deepseekv3-tiny.imatrix.gguf.at_8"), str(DEEPSEEK)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await _until(pilot, lambda: len(app.open_file.series) == 3)
        await pilot.press("x")
        await _until(pilot, lambda: isinstance(app.screen, ExpertsScreen))
        screen = app.screen
        assert screen.coverage.chunk_count == 12 and screen.coverage.rare == 4
        # the app's reload path (the watcher posts the same message): the map recounts
        early = load(at4)
        app.post_message(DataLoaded(app.current_path, early, compute_stats(early)))
        await _until(pilot, lambda: screen.coverage.chunk_count == 4)
        assert (screen.coverage.dead, screen.coverage.rare) == (coverage(early).dead, coverage(early).rare)
        assert "4 chunks" in _text(screen, "#exp-header")
        await pilot.press("escape", "c")
        await _until(pilot, lambda: isinstance(app.screen, ConvergenceScreen))
        moved = str(app.screen.query_one("#conv-moved", Static).render())
        # 8 -> 12 chunks: the dead experts gained nothing
        assert "slowest experts: blk.1 e2 +0 (0 tokens) · blk.1 e7 +0 (0 tokens) · blk.2 e0 +0 (0 tokens)" in moved


def test_screenshot_of_the_expert_map(tmp_path):
    """`imatui screenshot --view experts`: the map of a MoE file as SVG (spaces kept); a dense file is
    refused with one line and exit 2."""
    import subprocess
    import sys

    out = tmp_path / "map.svg"
    run = subprocess.run([sys.executable, "-m", "imatui", "screenshot", str(DEEPSEEK), "-o", str(out),
                          "--view", "experts", "--size", "100x30"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    svg = out.read_text(encoding="utf-8")
    assert svg.startswith('<svg xml:space="preserve"')
    assert "3×16" in svg and "6&#160;dead" in svg.replace(" ", "&#160;")
    dense = Path(__file__).parent / "fixtures" / "smollm2-prose.imatrix.gguf"
    run = subprocess.run([sys.executable, "-m", "imatui", "screenshot", str(dense), "-o", str(tmp_path / "d.svg"),
                          "--view", "experts"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no expert tensors" in run.stderr, run.stderr
    assert not (tmp_path / "d.svg").exists()
