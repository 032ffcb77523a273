"""The `?` screen: every key, and what the numbers mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from imatui.tui.widgets.layer_sparklines import METRICS
from imatui.tui.widgets.stats_table import (ACT_COLUMNS, LAYER_COLUMNS, LAYER_SIM_COLUMNS, MOE_COLUMNS,
                                            TENSOR_COLUMNS)

KEYS = [
    ("↑ ↓ j k, PgUp PgDn", "move through the table; the detail pane and the layer marker follow"),
    ("Enter", "on a tensor: show its detail pane in full (Enter again: back)"),
    ("s / S", "sort by the next / previous column (or click a column header, or Ctrl+P \"sort: by …\")"),
    ("r", "reverse the sort"),
    ("/", "filter tensor names: text, or a regex when it uses regex syntax (^ $ * + ? [ ] ( ) |)"),
    ("Esc", "clear the filter / close this screen"),
    ("t", "switch between the tensor table and the per-layer table"),
    ("m / M", "next / previous metric in the per-layer sparklines"),
    ("v", "cycle the layout: all panes, table only, layers, detail"),
    ("b", "show or hide the file browser (Enter opens the file)"),
    ("d", "diff the open file with the file selected in the browser"),
    ("p", "save an SVG screenshot in the current folder"),
    ("c", "convergence: how much each new checkpoint still changes the matrix (live file or snapshots)"),
    ("x", "MoE files: the expert map, layer × expert (dead and rare experts, chunks still needed; "
          "k kind, +/- rare threshold, t per-expert table)"),
    ("Ctrl+P", "command palette: every action, by name"),
    ("?", "this help"),
    ("q", "quit"),
]


def help_text() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row(Text("Keys", style="bold underline"), "")
    for key, what in KEYS:
        table.add_row(key, what)
    table.add_row("", "")
    table.add_row(Text("Columns", style="bold underline"),
                  "values are per-channel means of squared activations (sums2 / counts), as "
                  "llama-imatrix --show-statistics computes them")
    for col in TENSOR_COLUMNS + MOE_COLUMNS + ACT_COLUMNS:
        if col.help:
            table.add_row(col.label, col.help)
    table.add_row("", "")
    table.add_row(Text("Layer table", style="bold underline"), "")
    for col in LAYER_COLUMNS + LAYER_SIM_COLUMNS:
        if col.help:
            table.add_row(col.label, col.help)
    table.add_row("", "")
    table.add_row(Text("Metrics", style="bold underline"), ", ".join(m.label for m in METRICS))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(Text("imatui help", style="bold"), id="help-title")
            yield Static(help_text())

    def action_close(self) -> None:
        self.dismiss(None)
