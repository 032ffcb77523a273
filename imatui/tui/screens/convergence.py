"""The `c` screen: is more calibration data still changing anything?

Per checkpoint step, the minimum and the median over tensors of the cosine similarity between the
previous and the new per-channel mean importance (imatui.stats.convergence), as two sparklines over
the checkpoints so far, a table of the steps and the tensors that moved most in the last one.
Fed by the OpenFile (reloads of the followed file, NAME.at_N snapshots, or snapshot files named on
the command line): it subscribes to its `series_changed` signal and redraws in place when the series
grows. Enter on a tensor dismisses the screen with that tensor's name (the main view moves to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Sparkline, Static

from imatui.stats.convergence import format_duration, format_rate
from imatui.tui.widgets.flags import STRONG, flag_style

if TYPE_CHECKING:
    from imatui.tui.open_file import OpenFile

# a step whose lowest cosine is below this still changes the matrix noticeably
MOVED = 0.99


def _cos_text(value: float | None, digits: int = 4, app: App | None = None) -> Text:
    """A cosine; one below MOVED flagged (bold red, or reverse video under NO_COLOR)."""
    if value is None:
        return Text("–", style="dim")
    return Text(f"{value:.{digits}f}", style=flag_style(app, STRONG) if value < MOVED else "")


class ConvergenceScreen(Screen[str | None]):
    DEFAULT_CSS = """
    ConvergenceScreen { layout: vertical; }
    #conv-title { height: 1; padding: 0 1; background: $boost; }
    #conv-sparks { height: auto; }
    .conv-row { height: 1; padding: 0 1; }
    .conv-label { width: 14; }
    .conv-spark { width: 1fr; height: 1; }
    .conv-value { width: 12; text-align: right; }
    #conv-steps { height: auto; max-height: 60%; }
    #conv-fill { height: 1fr; }
    #conv-moved { height: auto; padding: 0 1; border-top: hkey $foreground 20%; }
    #conv-movers { height: auto; max-height: 8; }
    #conv-snapshots { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("escape", "close", "Back", id="convergence.close"),
        Binding("c", "close", "Back", show=False, id="convergence.close_c"),
    ]

    def __init__(self, open_file: "OpenFile") -> None:
        super().__init__()
        self.open_file = open_file
        self._ready = False  # widgets composed and the table's columns added

    def compose(self) -> ComposeResult:
        yield Static(id="conv-title")
        with Vertical(id="conv-sparks"):
            with Horizontal(classes="conv-row"):
                yield Static("min cos", classes="conv-label")
                yield Sparkline([], id="conv-min", classes="conv-spark", summary_function=min)
                yield Static(id="conv-min-value", classes="conv-value")
            with Horizontal(classes="conv-row"):
                yield Static("median cos", classes="conv-label")
                yield Sparkline([], id="conv-median", classes="conv-spark", summary_function=min)
                yield Static(id="conv-median-value", classes="conv-value")
        yield DataTable(id="conv-steps", cursor_type="row", zebra_stripes=True)
        yield Static(id="conv-moved")
        yield DataTable(id="conv-movers", cursor_type="row")
        yield Static(id="conv-snapshots")
        yield Static(id="conv-fill")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#conv-steps", DataTable)
        table.add_columns("chunks", "min cos", "median cos", "moved most", "chunks/min")
        self.query_one("#conv-movers", DataTable).add_columns("tensor", "cos", "1 − cos")
        for key_column in (table, self.query_one("#conv-movers", DataTable)):
            key_column.fixed_columns = 1  # the step / the tensor name stays when scrolled sideways
        self._ready = True
        self.refresh_series()
        self.open_file.series_changed.subscribe(self, lambda _series: self.refresh_series())
        self.set_interval(1.0, self.refresh_title)  # "last 12s ago"

    def action_close(self) -> None:
        self.dismiss(None)

    def refresh_title(self) -> None:
        """The title line only (its "last checkpoint 12s ago" changes every second)."""
        if not self._ready:
            return
        series = self.open_file.series
        title = Text("convergence", style="bold")
        counts = [c.chunk_count for c in series.checkpoints]
        if counts:
            title.append(f"  checkpoints at {', '.join(map(str, counts))} chunks")
        rate = series.chunks_per_minute()
        if rate is not None:
            title.append(f" · {format_rate(rate)}")
        ago = series.since_last()
        if ago is not None and self.open_file.status:
            title.append(f" · last {format_duration(ago)} ago")
        if len(counts) < 2:
            title.append("  (needs two checkpoints)", style="dim")
        self.query_one("#conv-title", Static).update(title)

    def refresh_series(self) -> None:
        """Redraw from the open file's series (again whenever it grows)."""
        if not self._ready:
            return
        self.refresh_title()
        series = self.open_file.series
        steps = series.steps

        mins = series.mins()
        medians = series.medians()
        self.query_one("#conv-min", Sparkline).data = mins
        self.query_one("#conv-median", Sparkline).data = medians
        self.query_one("#conv-min-value", Static).update(_cos_text(mins[-1] if mins else None, 4, self.app))
        self.query_one("#conv-median-value", Static).update(_cos_text(medians[-1] if medians else None, 5, self.app))

        table = self.query_one("#conv-steps", DataTable)
        table.clear()
        for step in steps:
            table.add_row(
                f"{step.from_chunks}→{step.to_chunks}",
                _cos_text(step.min, 4, self.app),
                _cos_text(step.median, 5, self.app),
                step.min_tensor or "–",
                format_rate(step.chunks_per_minute),
                key=f"{step.from_chunks}-{step.to_chunks}",
            )
        if steps:
            table.move_cursor(row=len(steps) - 1)

        self._show_movers(len(steps) - 1)

        snaps = sorted(self.open_file.snapshots.items(), key=lambda kv: kv[1])
        self.query_one("#conv-snapshots", Static).update(
            "snapshots: " + ", ".join(p.name for p, _ in snaps) if snaps else "")

    def _show_movers(self, index: int) -> None:
        """The tensors that moved most in step `index` (the last one unless the cursor says otherwise)."""
        steps = self.open_file.series.steps
        movers = self.query_one("#conv-movers", DataTable)
        movers.clear()
        if not 0 <= index < len(steps):
            self.query_one("#conv-moved", Static).update(
                Text("no step yet: the series needs two checkpoints of the same collection", style="dim"))
            return
        step = steps[index]
        moved = Text.assemble((f"moved most, {step.from_chunks}→{step.to_chunks} chunks", "bold"),
                              ("   Enter: show it in the table", "dim"))
        if step.slowest_experts:  # MoE: the experts that gained the fewest tokens in this step
            moved.append("\nslowest experts: ", style="bold")
            moved.append(" · ".join(f"blk.{s.layer} e{s.expert} +{s.gained} ({s.tokens} tokens)"
                                    for s in step.slowest_experts))
        self.query_one("#conv-moved", Static).update(moved)
        for name, cos in step.most_moved:
            movers.add_row(Text(name, style=flag_style(self.app, STRONG) if cos < MOVED else "bold"),
                           _cos_text(cos, 5, self.app),
                           f"{1 - cos:.2e}", key=name)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "conv-steps":
            self._show_movers(event.cursor_row)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "conv-movers" or event.row_key.value is None:
            return
        self.dismiss(str(event.row_key.value))
