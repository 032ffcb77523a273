"""The `?` screen: the keys of the screen it was opened from, and what that screen's columns mean.

The keys are read from the bindings in force on that screen (its focused widget's, the screen's and
the App's: posting's pattern), so help can never drift from the keys. The column notes come from the
tables' own column specs (main view) or from the list below (diff, convergence).
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from imatui.tui.screens.convergence import ConvergenceScreen
from imatui.tui.screens.diff import DiffScreen
from imatui.tui.screens.main import MainScreen
from imatui.tui.widgets.layer_sparklines import METRICS
from imatui.tui.widgets.stats_table import (ACT_COLUMNS, LAYER_COLUMNS, LAYER_SIM_COLUMNS, MOE_COLUMNS,
                                            TENSOR_COLUMNS)

# keys that are not bindings of ours (the tables' and Textual's own)
MOVING = [("↑ ↓ j k, PgUp PgDn", "move through the table"), ("Ctrl+P", "command palette: every action, by name")]
MAIN_MOVING = [("Enter", "on a tensor: its detail pane in full (Enter again: back)"),
               ("click a header", "sort by that column")]

DIFF_COLUMNS = [
    ("Tensor", "tensor name; per tensor, the per-channel mean importance sums2 / counts of A and of B"),
    ("Σ A, Σ B, Σ B−A", "each file's llama-imatrix Σ(Act²) (sum of the means over its live matrices)"),
    ("B/A", "ratio of the two Σ"),
    ("CosSim", "cosine of the two mean-importance vectors: 1 = the same shape over the channels"),
    ("JS", "Jensen–Shannon divergence of the two vectors normalized to sum 1, in bits (0 same, 1 disjoint)"),
    ("Rank A, Rank B, Shift", "position by Σ among the file's tensors (1 = largest); shift = B − A"),
    ("Top ch", "the channel (expert × n_in + channel) whose share of Σ moved most"),
    ("Top A, Top B, Top B−A", "that channel's mean importance in A, in B, and the change"),
    ("Note", "why a tensor cannot be compared (missing in one file, another shape, no tokens)"),
]

CONVERGENCE_COLUMNS = [
    ("chunks", "the step between two checkpoints (chunk counts)"),
    ("min cos", "lowest cosine over tensors between the two checkpoints' mean importance "
                "(below 0.99 in red: the matrix still changes)"),
    ("median cos", "median cosine over tensors"),
    ("moved most", "the tensor with the lowest cosine in that step"),
    ("chunks/min", "collection speed over the step"),
    ("1 − cos", "in the lower table: how far each of the tensors that moved most moved"),
]


def keys_of(screen: Screen) -> list[tuple[str, str]]:
    """(keys, what) for every binding in force on `screen`: the screen's own first, then the App's,
    then the focused widget's (the table's movement keys); one action's keys together."""
    app = screen.app
    rows: dict[tuple[int, str], tuple[list[str], str]] = {}
    for active in screen.active_bindings.values():
        binding = active.binding
        if binding.system and binding.action not in ("quit", "app.quit"):
            continue
        what = binding.description or binding.action
        if binding.tooltip and binding.tooltip.lower() != what.lower():
            what = f"{what}: {binding.tooltip}"
        # ours first (they carry an id): the screen's, the App's; then the widgets' and Textual's own
        rank = (0 if active.node is screen else 1 if active.node is app else 2) if binding.id else 3
        keys, _ = rows.setdefault((rank, binding.action), ([], what))
        label = app.get_key_display(binding)
        if label not in keys:
            keys.append(label)
    return [(" / ".join(keys), what) for (_, _), (keys, what) in sorted(rows.items(), key=lambda kv: kv[0][0])]


def column_notes(screen: Screen) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, note, [(column, meaning)]) sections for the screen's tables."""
    if isinstance(screen, MainScreen):
        tensor = [(c.label, c.help) for c in TENSOR_COLUMNS + MOE_COLUMNS + ACT_COLUMNS if c.help]
        layer = [(c.label, c.help) for c in LAYER_COLUMNS + LAYER_SIM_COLUMNS if c.help]
        return [("Columns", "per-channel means of squared activations (sums2 / counts), as "
                            "llama-imatrix --show-statistics computes them", tensor),
                ("Layer table (t)", "", layer),
                ("Metrics (m)", "what the per-layer sparklines show", [("", ", ".join(m.label for m in METRICS))])]
    if isinstance(screen, DiffScreen):
        return [("Columns", "A is the first file, B the second", DIFF_COLUMNS)]
    if isinstance(screen, ConvergenceScreen):
        return [("Columns", "checkpoints of one collection, compared two by two", CONVERGENCE_COLUMNS)]
    return []


def screen_name(screen: Screen) -> str:
    for kind, name in ((MainScreen, "main view"), (DiffScreen, "diff"), (ConvergenceScreen, "convergence")):
        if isinstance(screen, kind):
            return name
    return "this screen"


def help_text(screen: Screen) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row(Text("Keys", style="bold underline"), "")
    extra = MOVING + (MAIN_MOVING if isinstance(screen, MainScreen) else [])
    for key, what in keys_of(screen) + extra:
        table.add_row(key, what)
    for title, note, rows in column_notes(screen):
        table.add_row("", "")
        table.add_row(Text(title, style="bold underline"), Text(note, style="dim"))
        for label, meaning in rows:
            table.add_row(label, meaning)
    return table


class HelpScreen(ModalScreen[None]):
    """Help for the screen below it (`for_screen`)."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, for_screen: Screen) -> None:
        super().__init__()
        self.for_screen = for_screen

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(Text(f"imatui help: {screen_name(self.for_screen)}", style="bold"), id="help-title")
            yield Static(help_text(self.for_screen), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
