"""Command palette entries: one per action, namespaced ("view: …", "sort: …", "metric: …")."""

from __future__ import annotations

from typing import Iterable

from textual.app import SystemCommand

from imatui.tui.screens.main import MainScreen
from imatui.tui.widgets.layer_sparklines import METRICS, LayerSparklines

SCALES = {"auto": "per-layer bars on a log scale where a row spans a decade or more, else linear",
          "log": "per-layer bars on a log scale (positive metrics: Σ, μ, Max, σ)",
          "linear": "per-layer bars on a linear scale"}
COLUMN_SETS = {"compact": "the tensor table's outlier columns (key a toggles)",
               "all": "every column of the tensor table (key a toggles)"}

VIEWS = {"all": "all panes", "table": "table only", "layers": "layers (per-layer table + sparklines)",
         "detail": "detail of the selected tensor"}


def main_commands(main: MainScreen) -> Iterable[SystemCommand]:
    """The main view's actions, by name."""
    yield SystemCommand("view: tensor table", "one row per tensor", lambda: main.show_table("tensors"))
    yield SystemCommand("view: per-layer table", "llama-imatrix's weighted averages per block",
                        lambda: main.show_table("layers"))
    for view, what in VIEWS.items():
        yield SystemCommand(f"view: {what}", f"layout: {what}", lambda v=view: setattr(main, "view", v))
    yield SystemCommand("view: toggle file browser", "show or hide the imatrix files of the folder",
                        main.action_toggle_browser)
    yield SystemCommand("filter: tensor names", "text or regex over tensor names", main.action_filter)
    yield SystemCommand("filter: clear", "show every tensor", main.action_clear_filter)
    table = main.tensor_table
    for col in table.spec:
        yield SystemCommand(f"sort: by {col.label}", col.help or f"sort the table by {col.label}",
                            lambda c=col.key: main.sort_by(c))
    yield SystemCommand("sort: reverse", "reverse the sort order", main.action_reverse_sort)
    for metric in METRICS:
        yield SystemCommand(f"metric: {metric.label}", "per-layer sparklines show this metric",
                            lambda k=metric.key: main.set_metric(k))
    sparklines = main.query_one(LayerSparklines)
    for scale, what in SCALES.items():
        yield SystemCommand(f"metric: {scale} scale", what, lambda v=scale: sparklines.set_scale(v))
    for name, what in COLUMN_SETS.items():
        yield SystemCommand(f"view: {name} columns", what, lambda v=name: table.set_column_set(v))
    yield SystemCommand("diff: with the file selected in the browser",
                        "compare the open file with another, tensor by tensor", main.action_diff)
    yield SystemCommand("view: convergence over the checkpoints",
                        "min / median cosine between checkpoints, the tensors that moved most",
                        main.action_convergence)
    yield SystemCommand("screenshot: save SVG here", "write the screen as SVG into the current folder",
                        main.app.action_save_screenshot)
    yield SystemCommand("help: keys and columns", "what every key and number means", main.app.action_help)
