"""The collector's per-block layer similarity (imatui.layer_similarity): carried into the layer
statistics, the JSON/CSV layer output, the sparkline pane ("layer sim") and the layer table
("LayerSim"); a file without it shows none of it and prints llama's exact tables.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from textual.widgets import Static

from imatui.cli import main
from imatui.collect.run import KEY_SIMILARITY, KEY_SIMILARITY_TOKENS, Totals
from imatui.formats import load
from imatui.formats.write import save
from imatui.stats import compute_stats
from imatui.tui.app import make_app
from imatui.tui.widgets.layer_sparklines import SIM_LABEL, LayerBars, LayerSparklines

from conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
SIZE = (120, 40)
# exact in float32 (the file stores a float32 array), all different, not monotonic
SIMS = [0.75 + ((7 * i) % 30) / 128 for i in range(30)]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    imx = load(PROSE).materialize()
    imx.metadata[KEY_SIMILARITY] = list(SIMS)
    path = tmp_path_factory.mktemp("sim") / "sim.imatrix.gguf"
    save(imx, path)
    return path


def _cli(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_json_and_csv_layers_carry_the_values(sim_file, capsys):
    layers = json.loads(_cli(capsys, "stats", sim_file, "--format", "json"))["layers"]
    assert [lay["layer_similarity"] for lay in layers] == SIMS
    rows = list(csv.DictReader(io.StringIO(_cli(capsys, "stats", sim_file, "--layers", "--format", "csv"))))
    assert [float(r["layer_similarity"]) for r in rows] == SIMS
    # the rest of the layer statistics are the plain file's
    plain = json.loads(_cli(capsys, "stats", PROSE, "--format", "json"))["layers"]
    assert [lay["layer_similarity"] for lay in plain] == [None] * 30
    assert [{k: v for k, v in lay.items() if k != "layer_similarity"} for lay in layers] == \
        [{k: v for k, v in lay.items() if k != "layer_similarity"} for lay in plain]


def test_llama_tables_unchanged(sim_file, capsys):
    for args in ((), ("--layers",)):
        ours = _cli(capsys, "stats", sim_file, *args).replace(str(sim_file), "F")
        plain = _cli(capsys, "stats", PROSE, *args).replace(str(PROSE), "F")
        assert ours == plain
    ref = (FIXTURES / "smollm2-prose.imatrix.gguf.stats.txt").read_text()
    assert ours.strip() == ref[ref.index("Computing weighted"):].strip()


def test_collector_format(tmp_path):
    """What `imatui collect` writes (imatui.collect.run's write(): Python floats from float64
    sums / tokens, plus the token count) reads back as the per-layer values."""
    totals = Totals()
    totals.add_imatrix(load(PROSE))
    totals.datasets = ["prose.txt"]
    totals.chunks_done = 40
    totals.sim_tokens = 20480.0
    totals.sim_sum = np.asarray(SIMS, dtype=np.float64) * totals.sim_tokens
    extra = {KEY_SIMILARITY: [float(v) for v in totals.sim_sum / totals.sim_tokens],
             KEY_SIMILARITY_TOKENS: int(totals.sim_tokens)}
    path = tmp_path / "collected.gguf"
    save(totals.to_imatrix(512, extra), path)
    imx = load(path)
    assert imx.metadata[KEY_SIMILARITY_TOKENS] == 20480
    report = compute_stats(imx)
    assert [lay.layer_similarity for lay in report.layers] == SIMS


def test_bad_metadata_is_ignored(tmp_path):
    imx = load(PROSE).materialize()
    imx.metadata[KEY_SIMILARITY] = "not a list"
    report = compute_stats(imx)
    assert all(lay.layer_similarity is None for lay in report.layers)
    imx.metadata[KEY_SIMILARITY] = [0.9] * 10  # fewer values than blocks: the rest stay empty
    report = compute_stats(imx)
    assert [lay.layer_similarity for lay in report.layers] == [0.9] * 10 + [None] * 20


def _row_labels(sparklines: LayerSparklines) -> list[str]:
    return [str(row.query_one(".spark-label", Static).render()) for row in sparklines.query(".spark-row")]


async def test_app_shows_row_and_column(sim_file):
    app = make_app([str(sim_file)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        sparklines = app.query_one(LayerSparklines)
        labels = _row_labels(sparklines)
        assert labels[-1] == SIM_LABEL and len(labels) == 5  # 7 kinds in 4 rows, then layer sim
        sim_row = list(sparklines.query(".spark-row"))[-1]
        assert list(sim_row.query_one(LayerBars).data) == SIMS
        # same x axis as the kinds' rows
        kind_spark = list(sparklines.query(".spark-row"))[0].query_one(LayerBars)
        assert sim_row.query_one(LayerBars).region.x == kind_spark.region.x
        assert sim_row.query_one(LayerBars).region.width == kind_spark.region.width

        await pilot.press("t")  # the layer table; the marker follows its cursor
        layers = app.layer_table
        assert [c.key for c in layers.spec][-1] == "layer_similarity"
        assert str(layers.columns["layer_similarity"].label).strip() == "LayerSim"
        await pilot.press(*["down"] * 7)
        assert layers.selected_key == "7"
        assert layers.cell_text("7", "layer_similarity") == "%.4f" % SIMS[7] == "0.8984"
        values = sparklines.values_at_selected_layer()
        assert values[SIM_LABEL] == "0.8984"
        # the value beside the row stays a cosine whatever the metric
        await pilot.press("m")
        assert sparklines.values_at_selected_layer()[SIM_LABEL] == "0.8984"
        assert list(sim_row.query_one(LayerBars).data) == SIMS


async def test_app_without_it_shows_neither():
    app = make_app([str(PROSE)])
    async with app.run_test(size=SIZE) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        sparklines = app.query_one(LayerSparklines)
        labels = _row_labels(sparklines)
        assert SIM_LABEL not in labels and len(labels) == 4  # attn_k/q/v, attn_output, ffn_down, ffn_gate/up
        assert SIM_LABEL not in sparklines.values_at_selected_layer()
        await pilot.press("t")
        assert "layer_similarity" not in [c.key for c in app.layer_table.spec]
        assert "LayerSim" not in [str(c.label).strip() for c in app.layer_table.columns.values()]
