"""Command palette entries: one per action, namespaced ("view: …", "sort: …", "metric: …")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from textual.app import SystemCommand

from imatui.tui.widgets.layer_sparklines import METRICS, LayerSparklines

SCALES = {"auto": "per-layer bars on a log scale where a row spans a decade or more, else linear",
          "log": "per-layer bars on a log scale (positive metrics: Σ, μ, Max, σ)",
          "linear": "per-layer bars on a linear scale"}
COLUMN_SETS = {"compact": "the tensor table's outlier columns (key a toggles)",
               "all": "every column of the tensor table (key a toggles)"}

if TYPE_CHECKING:
    from imatui.tui.app import ImatuiApp

VIEWS = {"all": "all panes", "table": "table only", "layers": "layers (per-layer table + sparklines)",
         "detail": "detail of the selected tensor"}


def app_commands(app: "ImatuiApp") -> Iterable[SystemCommand]:
    yield SystemCommand("view: tensor table", "one row per tensor", lambda: app.show_table("tensors"))
    yield SystemCommand("view: per-layer table", "llama-imatrix's weighted averages per block",
                        lambda: app.show_table("layers"))
    for view, what in VIEWS.items():
        yield SystemCommand(f"view: {what}", f"layout: {what}", lambda v=view: app.set_view(v))
    yield SystemCommand("view: toggle file browser", "show or hide the imatrix files of the folder",
                        app.action_toggle_browser)
    yield SystemCommand("filter: tensor names", "text or regex over tensor names", app.action_filter)
    yield SystemCommand("filter: clear", "show every tensor", app.action_clear_filter)
    table = app.tensor_table
    for col in table.spec:
        yield SystemCommand(f"sort: by {col.label}", col.help or f"sort the table by {col.label}",
                            lambda c=col.key: app.sort_by(c))
    yield SystemCommand("sort: reverse", "reverse the sort order", app.action_reverse_sort)
    for metric in METRICS:
        yield SystemCommand(f"metric: {metric.label}", "per-layer sparklines show this metric",
                            lambda k=metric.key: app.set_metric(k))
    sparklines = app.main_screen.query_one(LayerSparklines)
    for scale, what in SCALES.items():
        yield SystemCommand(f"metric: {scale} scale", what, lambda v=scale: sparklines.set_scale(v))
    for name, what in COLUMN_SETS.items():
        yield SystemCommand(f"view: {name} columns", what, lambda v=name: table.set_column_set(v))
    yield SystemCommand("diff: with the file selected in the browser",
                        "compare the open file with another, tensor by tensor", app.action_diff)
    yield SystemCommand("view: convergence over the checkpoints",
                        "min / median cosine between checkpoints, the tensors that moved most",
                        app.action_convergence)
    yield SystemCommand("screenshot: save SVG here", "write the screen as SVG into the current folder",
                        app.action_save_screenshot)
    yield SystemCommand("help: keys and columns", "what every key and number means", app.action_help)
