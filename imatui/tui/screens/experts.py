"""The `x` screen: the experts of the whole model, layer × expert.

One row per MoE layer, one cell per expert: its tokens on a log scale (glyph height and colour, so
it reads without colour too), dead experts (never routed) as ×, rare ones (below the threshold, by
default 10% of the layer's mean) as !, and the layer's shared experts in a column apart. When the
terminal is narrower than the experts, each column stands for several experts and shows the fewest
tokens among them (a dead or rare expert is never hidden by its neighbours).

The cursor picks an expert: the panel below shows its tokens, share of the layer, the chunks it
still needs, its statistics in the chosen kind's tensor (gate, up, down; `k` cycles) and its
per-channel chart. `t` shows the per-expert table of that tensor (sortable). The numbers come from
imatui.stats.experts; coverage needs only the counts (milliseconds on a 1 GB file), the statistics of
one expert read its tensor in a worker. A live collection calls update_data on every reload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from imatui import numfmt
from imatui.errors import ImatrixError
from imatui.imatrix import Imatrix, split_name
from imatui.printers import EXPERT_COLUMNS, expert_cells
from imatui.stats.experts import (EXPERT_SORT_KEYS, Coverage, ExpertRow, LayerCoverage, RareThreshold,
                                  chunks_to_reach, coverage, expert_stats, expert_table, sort_experts)
from imatui.stats.tensor import StatsReport, TensorStats
from imatui.tui.widgets.channel_plot import PlotView, channel_axis, log_axis

# tokens on a log scale: glyph height and a viridis colour per level (readable in 256 colours and,
# by the glyphs alone, under NO_COLOR)
GLYPHS = "▁▂▃▄▅▆▇█"
COLOURS = ["#3b1f5c", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]
DEAD, RARE, SHARED = "×", "!", "S"
DEAD_STYLE, RARE_STYLE = "bold #ff5f5f", "bold #ffaf00"
CURSOR, CURSOR_STYLE = "◆", "bold #000000 on #e4e4e4"
LABEL_WIDTH = 7  # "blk 57 "
MAX_CELL = 4  # a few experts get wider cells (up to this many columns each) when there is room
SHARED_WIDTH = 2  # "S "
PLOT_POINTS = 1024
EXPERT_SORTS = ["expert", "tokens", "share", "sum", "max", "mean", "std", "entropy", "zd"]


def columns_for(n_experts: int, width: int) -> tuple[int, int]:
    """(experts per column, columns) so that the experts fit in `width` cells."""
    width = max(1, width)
    group = max(1, math.ceil(n_experts / width))
    return group, math.ceil(n_experts / group)


@dataclass
class LogScale:
    """Token counts to a level 0..len(GLYPHS)-1 on a log scale spanning the file's live counts."""

    lo: float
    hi: float

    @classmethod
    def of(cls, cov: Coverage) -> "LogScale":
        live = [c for lay in cov.layers for c in lay.counts if c > 0]
        if not live:
            return cls(0.0, 1.0)
        return cls(math.log10(min(live)), math.log10(max(live)))

    def level(self, tokens: float) -> int:
        if tokens <= 0:
            return 0
        span = self.hi - self.lo
        if span <= 0:
            return len(GLYPHS) - 1
        x = (math.log10(tokens) - self.lo) / span
        return min(len(GLYPHS) - 1, max(0, int(x * len(GLYPHS))))


def cell(lay: LayerCoverage, first: int, group: int, scale: LogScale) -> tuple[str, str]:
    """(glyph, style) of the column holding experts first..first+group-1 of a layer: the fewest
    tokens among them; dead or rare when any of them is."""
    counts = lay.counts[first: first + group]
    low = min(counts)
    if low <= 0:
        return DEAD, DEAD_STYLE
    if low < lay.threshold:
        return RARE, RARE_STYLE
    level = scale.level(low)
    return GLYPHS[level], COLOURS[level]


@lru_cache(maxsize=64)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


def _fmt_tokens(value: float) -> str:
    value = round(value)
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:g}"


class ExpertMap(Widget, can_focus=True):
    """Layer × expert cells; arrows move the cursor, which the screen follows."""

    DEFAULT_CSS = "ExpertMap { height: auto; max-height: 65%; min-height: 3; }"

    BINDINGS = [
        Binding("left,h", "move(0, -1)", "←", show=False),
        Binding("right,l", "move(0, 1)", "→", show=False),
        Binding("up", "move(-1, 0)", "↑", show=False),
        Binding("down", "move(1, 0)", "↓", show=False),
        Binding("shift+left,H", "move_column(-1)", "column ←", show=False),
        Binding("shift+right,L", "move_column(1)", "column →", show=False),
        Binding("pageup", "move(-10, 0)", show=False),
        Binding("pagedown", "move(10, 0)", show=False),
        Binding("home", "first", show=False),
        Binding("end", "last", show=False),
    ]

    @dataclass
    class Moved(Message):
        layer: int  # block number
        expert: int

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.coverage: Coverage | None = None
        self.scale = LogScale(0.0, 1.0)
        self.row = 0  # index into coverage.layers
        self.expert = 0
        self.top = 0  # first layer row shown

    # -- data and geometry ---------------------------------------------------------------------
    def set_coverage(self, cov: Coverage) -> None:
        self.coverage = cov
        self.scale = LogScale.of(cov)
        if cov.layers:
            self.row = min(self.row, len(cov.layers) - 1)
            self.expert = min(self.expert, cov.layers[self.row].n_experts - 1)
        self.refresh(layout=True)

    @property
    def n_experts(self) -> int:
        cov = self.coverage
        return max((lay.n_experts for lay in cov.layers), default=0) if cov else 0

    def geometry(self, width: int | None = None) -> tuple[int, int]:
        """(experts per column, columns) at the current width (or at `width` cells of content)."""
        width = self.size.width if width is None else width
        return columns_for(self.n_experts, width - LABEL_WIDTH - SHARED_WIDTH)

    def cell_width(self, width: int | None = None) -> int:
        """Screen columns per map column: wider cells when few experts leave room."""
        width = (self.size.width if width is None else width) - LABEL_WIDTH - SHARED_WIDTH
        n = self.n_experts
        return max(1, min(MAX_CELL, width // n)) if n else 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + (len(self.coverage.layers) if self.coverage else 0)

    @property
    def selected(self) -> tuple[int, int] | None:
        """(block, expert) under the cursor."""
        if not self.coverage or not self.coverage.layers:
            return None
        return self.coverage.layers[self.row].layer, self.expert

    def select(self, layer: int, expert: int) -> None:
        cov = self.coverage
        if not cov:
            return
        for i, lay in enumerate(cov.layers):
            if lay.layer == layer:
                self.row, self.expert = i, max(0, min(expert, lay.n_experts - 1))
                self._moved()
                return

    def _moved(self) -> None:
        rows = max(1, self.size.height - 1)
        if self.row < self.top:
            self.top = self.row
        elif self.row >= self.top + rows:
            self.top = self.row - rows + 1
        self.refresh()
        sel = self.selected
        if sel is not None:
            self.post_message(self.Moved(*sel))

    def action_move(self, rows: int, experts: int) -> None:
        cov = self.coverage
        if not cov or not cov.layers:
            return
        self.row = max(0, min(len(cov.layers) - 1, self.row + rows))
        n = cov.layers[self.row].n_experts
        self.expert = max(0, min(n - 1, self.expert + experts))
        self._moved()

    def action_move_column(self, step: int) -> None:
        group, _ = self.geometry()
        self.action_move(0, step * group)

    def action_first(self) -> None:
        self.row, self.expert = 0, 0
        self._moved()

    def action_last(self) -> None:
        if self.coverage and self.coverage.layers:
            self.row = len(self.coverage.layers) - 1
            self.expert = self.coverage.layers[self.row].n_experts - 1
            self._moved()

    def on_click(self, event: events.Click) -> None:
        cov = self.coverage
        if not cov or not cov.layers or event.y < 1:
            return
        row = self.top + event.y - 1
        x = event.x - LABEL_WIDTH - SHARED_WIDTH
        if row >= len(cov.layers) or x < 0:
            return
        group, _ = self.geometry()
        self.row = row
        self.expert = min(cov.layers[row].n_experts - 1, (x // self.cell_width()) * group)
        self._moved()

    def on_resize(self) -> None:
        self._moved()

    # -- drawing -------------------------------------------------------------------------------
    # the Line API: Textual asks for the visible lines only, and each line is a few runs of
    # pre-parsed styles (a Text of 7,000 one-cell spans took most of a second to convert)
    NO_EXPERTS = ("no expert tensors in this file (a dense model, or a legacy .dat, which loses the "
                  "per-expert counts)")

    def _row_runs(self, i: int, group: int, ncols: int) -> list[tuple[str, str]]:
        """(text, style) runs of layer row i: label, shared mark, cells (equal styles merged)."""
        lay = self.coverage.layers[i]
        here = i == self.row
        runs = [(f"blk {lay.layer:<3}"[:LABEL_WIDTH].ljust(LABEL_WIDTH), "bold" if here else "dim"),
                (SHARED if lay.shared else " ", "bold #87afff" if lay.shared else ""), (" ", "")]
        cursor_col = self.expert // group if here else -1
        cw = self.cell_width()
        glyphs: list[str] = []
        style = None
        for col in range(ncols):
            first = col * group
            if first >= lay.n_experts:
                break
            glyph, st = cell(lay, first, group, self.scale)
            text = glyph * cw
            if col == cursor_col:  # a diamond on a light cell: distinct in colour and without it
                text, st = CURSOR.center(cw), CURSOR_STYLE
            if st != style and glyphs:
                runs.append(("".join(glyphs), style or ""))
                glyphs = []
            style = st
            glyphs.append(text)
        if glyphs:
            runs.append(("".join(glyphs), style or ""))
        return runs

    def _visible(self) -> range:
        cov = self.coverage
        rows = max(0, self.size.height - 1)
        self.top = max(0, min(self.top, len(cov.layers) - rows))
        return range(self.top, min(len(cov.layers), self.top + rows))

    def lines(self) -> list[list[tuple[str, str]]]:
        """What the map shows now, as (text, style) runs per line (the ruler first)."""
        cov = self.coverage
        if cov is None:
            return []
        if not cov.layers:
            return [[(self.NO_EXPERTS, "dim")]]
        group, ncols = self.geometry()
        return [[(self._ruler(group, ncols), "dim")]] + [self._row_runs(i, group, ncols) for i in self._visible()]

    def plain_lines(self) -> list[str]:
        return ["".join(text for text, _ in line) for line in self.lines()]

    def render_line(self, y: int) -> Strip:
        cov = self.coverage
        if cov is None:
            return Strip.blank(self.size.width, self.rich_style)
        base = self.rich_style
        if not cov.layers:
            runs = [(self.NO_EXPERTS, "dim")] if y == 0 else []
        elif y == 0:
            group, ncols = self.geometry()
            runs = [(self._ruler(group, ncols), "dim")]
        else:
            visible = self._visible()
            i = visible.start + y - 1
            if i >= visible.stop:
                runs = []
            else:
                group, ncols = self.geometry()
                runs = self._row_runs(i, group, ncols)
        segments = [Segment(text, base + _style(st)) for text, st in runs]
        return Strip(segments).crop_extend(0, self.size.width, base)

    def _ruler(self, group: int, ncols: int) -> str:
        """Expert numbers over the columns, at least 8 screen columns apart."""
        cw = self.cell_width()
        line = [" "] * (LABEL_WIDTH + SHARED_WIDTH + ncols * cw)
        label = "expert"
        line[: len(label)] = list(label)
        step = next(k for k in (1, 2, 4, 8, 16, 32, 64) if k * cw >= 8 or k == 64)
        for col in range(0, ncols, step):
            text = str(col * group)
            start = LABEL_WIDTH + SHARED_WIDTH + col * cw
            if start + len(text) <= len(line):
                line[start: start + len(text)] = list(text)
        return "".join(line)


@dataclass
class ExpertDetailReady(Message):
    layer: int
    expert: int
    tensor: str
    stats: TensorStats | None
    values: np.ndarray | None  # the expert's per-channel means (thinned for the chart)


@dataclass
class ExpertTableReady(Message):
    tensor: str
    rows: list[ExpertRow]


class ExpertsScreen(Screen):
    """The expert map (see the module docstring)."""

    DEFAULT_CSS = """
    ExpertsScreen { layout: vertical; overflow: hidden; }
    #exp-header { height: auto; padding: 0 1; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    #exp-map { padding: 0 1; }
    #exp-table { height: 1fr; display: none; border-top: hkey $foreground 20%; border-title-align: left; }
    ExpertsScreen.-table #exp-table { display: block; }
    ExpertsScreen.-table #exp-map { display: none; }
    #exp-detail { height: 1fr; min-height: 4; border-top: hkey $foreground 20%; }
    #exp-detail-text { height: auto; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #exp-plot { height: 1fr; }
    ExpertsScreen.-short ExpertMap { max-height: 50%; }
    """

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="experts.close"),
        Binding("x", "app.pop_screen", "Back", show=False, id="experts.close_x"),
        Binding("k", "next_kind", "Kind", id="experts.kind", tooltip="statistics of the gate / up / down tensor"),
        Binding("plus,equals_sign", "threshold(2.0)", "Rare ±", id="experts.rare_up",
                tooltip="double the rare threshold (-: halve it)"),
        Binding("minus", "threshold(0.5)", "Rare÷2", show=False, id="experts.rare_down",
                tooltip="halve the rare threshold"),
        Binding("t", "toggle_table", "Table", id="experts.table",
                tooltip="the experts of this tensor as a table (one row per expert)"),
        Binding("s", "next_sort", "Sort", show=False, id="experts.sort",
                tooltip="sort the expert table by the next column"),
        Binding("r", "reverse_sort", "Reverse", show=False, id="experts.reverse"),
    ]

    def __init__(self, imatrix: Imatrix | None, report: StatsReport | None = None,
                 threshold: RareThreshold | None = None) -> None:
        super().__init__()
        self.imatrix = imatrix
        self.report = report
        self.threshold = threshold or RareThreshold()
        self.coverage: Coverage | None = None
        self.kinds: list[str] = []
        self.kind = 0
        self.sort_column = "expert"
        self.sort_reverse = False
        self.table_rows: list[ExpertRow] = []
        self.table_tensor: str | None = None
        self.detail: ExpertDetailReady | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="exp-header")
        yield ExpertMap(id="exp-map")
        yield DataTable(id="exp-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="exp-detail"):
            yield Static(id="exp-detail-text")
            yield PlotView(id="exp-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#exp-table", DataTable).add_columns(*EXPERT_COLUMNS, "")
        self.query_one(ExpertMap).focus()
        self.update_data(self.imatrix, self.report)

    # -- data ------------------------------------------------------------------------------------
    def update_data(self, imatrix: Imatrix | None, report: StatsReport | None = None) -> None:
        """New data (a reload of a live collection): recount, redraw, keep the cursor."""
        self.imatrix, self.report = imatrix, report
        if imatrix is None:
            self.coverage = None
            self.query_one("#exp-header", Static).update(Text("no file open", style="dim"))
            return
        try:
            self.coverage = coverage(imatrix, self.threshold)
        except ImatrixError as exc:
            self.notify(str(exc), title="experts", severity="error")
            return
        kinds = []
        for lay in self.coverage.layers:
            for name in lay.tensors:
                kind = split_name(name)[1]
                if kind not in kinds:
                    kinds.append(kind)
        current = self.kinds[self.kind] if self.kinds else None
        self.kinds = kinds
        self.kind = kinds.index(current) if current in kinds else (kinds.index("ffn_up_exps")
                                                                   if "ffn_up_exps" in kinds else 0)
        self.query_one(ExpertMap).set_coverage(self.coverage)
        self._header()
        self._request_detail()
        if self.has_class("-table"):
            self._request_table()

    def _header(self) -> None:
        """Two lines: the coverage in numbers, then the legend of the map."""
        cov = self.coverage
        if cov is None:
            return
        wide = self.size.width >= 120
        text = Text(no_wrap=True, overflow="ellipsis")
        if wide:
            text.append(cov.file.rsplit("/", 1)[-1] + "  ", style="bold")
        if not cov.layers:
            text.append("no expert tensors", style="dim")
            self.query_one("#exp-header", Static).update(text)
            return
        n = max(lay.n_experts for lay in cov.layers)
        text.append(f"{len(cov.layers)} layers × {n} experts · {cov.chunk_count} chunks · " if wide
                    else f"{len(cov.layers)}×{n} experts · ")
        text.append(f"{cov.dead} dead", style=DEAD_STYLE if cov.dead else "")
        text.append(" · ")
        text.append(f"{cov.rare} rare", style=RARE_STYLE if cov.rare else "")
        t = cov.threshold
        text.append(f" ({t.label})" if wide else f" (<{t.tokens:g} tok)" if t.tokens is not None
                    else f" (<{t.fraction * 100:g}% mean)")
        if cov.chunks_needed is not None and cov.slowest is not None:
            text.append(f" · ~{cov.chunks_needed} more chunks for the rare ones" if wide
                        else f" · +{cov.chunks_needed} chunks")
            text.append(f" (blk.{cov.slowest[0]} e{cov.slowest[1]})", style="dim")
        text.append("\n")
        m = self.query_one(ExpertMap)
        # the map's own size may not be laid out yet: its content width is the screen's less padding
        group, _ = m.geometry(self.size.width - 2)
        for glyph, colour in zip(GLYPHS, COLOURS):
            text.append(glyph, style=colour)
        text.append(f" {_fmt_tokens(10 ** m.scale.lo)}…{_fmt_tokens(10 ** m.scale.hi)} tokens" + (" (log)  " if wide else " "))
        text.append(DEAD, style=DEAD_STYLE)
        text.append(" dead " + (" " if wide else ""))
        text.append(RARE, style=RARE_STYLE)
        text.append(" rare " + (" " if wide else ""))
        text.append(SHARED, style="bold #87afff")
        text.append(" shared")
        if self.kinds:
            text.append(f" · {self.kinds[self.kind]}", style="bold")
        if group > 1:
            text.append(f" · 1 column = {group} experts (fewest shown)" if wide
                        else f" · {group} experts/column", style="bold")
        self.query_one("#exp-header", Static).update(text)

    def on_resize(self) -> None:
        self.set_class(self.size.height < 40, "-short")  # a small terminal shares its rows evenly
        self._header()

    # -- the selected expert -----------------------------------------------------------------------
    @on(ExpertMap.Moved)
    def _moved(self, event: ExpertMap.Moved) -> None:
        self._request_detail()

    def _selected_tensor(self, layer: int) -> str | None:
        lay = self.coverage.layer(layer) if self.coverage else None
        if lay is None or not lay.tensors:
            return None
        kind = self.kinds[self.kind] if self.kinds else None
        for name in lay.tensors:
            if split_name(name)[1] == kind:
                return name
        return lay.tensors[0]

    def _request_detail(self) -> None:
        sel = self.query_one(ExpertMap).selected
        if sel is None or self.imatrix is None:
            self.query_one("#exp-detail-text", Static).update("")
            self.query_one("#exp-plot", PlotView).plot(None)
            return
        layer, expert = sel
        tensor = self._selected_tensor(layer)
        self._show_counts(layer, expert, tensor)
        if tensor is not None:
            self._read_expert(self.imatrix, layer, expert, tensor)

    def _show_counts(self, layer: int, expert: int, tensor: str | None,
                     stats: TensorStats | None = None) -> None:
        """The expert's tokens and status (known at once), then its statistics when read."""
        lay = self.coverage.layer(layer) if self.coverage else None
        if lay is None:
            return
        tokens = lay.counts[expert]
        status = lay.status(expert)
        # one line each (cropped, never wrapped): the map above keeps its rows at any width
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"blk.{layer} expert {expert}", style="bold")
        text.append(f" · {tokens} tokens · {lay.shares[expert] * 100:.2f}% of the layer (mean {lay.mean:.1f})")
        if status == "dead":
            text.append(" · DEAD: never routed a token", style=DEAD_STYLE)
        elif status == "rare":
            text.append(f" · RARE ({self.threshold.label}: {lay.threshold:.1f})", style=RARE_STYLE)
            more = chunks_to_reach(np.array([tokens]), lay.threshold, self.coverage.chunk_count)[0]
            if np.isfinite(more):
                text.append(f", ~{int(more)} more chunks at its rate")
        if lay.shared:
            text.append(" · the layer also has a shared expert", style="dim")
        text.append("\n")
        if tensor is not None:
            text.append(split_name(tensor)[1], style="bold")
        if stats is not None:
            f = numfmt.fmt  # the same text for a quantity as the tensor table and the detail pane
            text.append(f"  Σ {f('sum', stats.sum)} · max {f('max', stats.max)} · μ {f('mean', stats.mean)} · "
                        f"σ {f('std', stats.std)} · entropy {f('entropy', stats.entropy)} "
                        f"({f('entropy_norm', stats.entropy_norm)}) · ZD {f('zd', stats.zd)}")
            text.append("\ntop channels ", style="bold")
            for i, (c, v) in enumerate(zip(stats.top_channels[:6], stats.top_values[:6])):
                if i:
                    text.append(" · ", style="dim")
                share = v / stats.sum * 100 if stats.sum else 0.0
                text.append(str(c), style="bold")
                text.append(f" {numfmt.value(v)} ({share:.1f}%)")
        elif status == "dead":
            text.append("  no statistics: no tokens", style="dim")
        self.query_one("#exp-detail-text", Static).update(text)

    @work(thread=True, exclusive=True, group="expert-detail", exit_on_error=False, description="expert detail")
    def _read_expert(self, imatrix: Imatrix, layer: int, expert: int, tensor: str) -> None:
        entry = imatrix.entries.get(tensor)
        if entry is None:
            return
        try:
            sums2 = np.asarray(entry.sums2)
            stats = expert_stats(entry, expert, sums2)
            values = None
            if stats is not None:
                values = sums2[expert].astype(np.float64) / float(entry.counts[expert])
        except ImatrixError as exc:
            self.app.call_from_thread(self.notify, str(exc), title="experts", severity="error")
            return
        except Exception as exc:  # noqa: BLE001 - a file rewritten under us must not kill the screen
            self.app.call_from_thread(self.notify, f"{tensor}: {type(exc).__name__}: {exc}",
                                      title="experts", severity="error")
            return
        if not get_current_worker().is_cancelled:
            self.post_message(ExpertDetailReady(layer, expert, tensor, stats, values))

    def on_expert_detail_ready(self, message: ExpertDetailReady) -> None:
        if self.query_one(ExpertMap).selected != (message.layer, message.expert):
            return
        self.detail = message
        self._show_counts(message.layer, message.expert, message.tensor, message.stats)
        values = message.values
        plot = self.query_one("#exp-plot", PlotView)
        if values is None:
            plot.plot(None)
            return
        x, y = _thin_max(values, PLOT_POINTS)

        log = bool(np.all(values > 0))

        def draw(fig) -> None:
            # as the main detail pane: log10 on a linear axis with round power-of-ten ticks, and
            # whole channel numbers (plotext's own log axis ignores ticks set on it)
            signal = fig.signal(x, np.log10(y).tolist() if log else y)
            signal.lines()
            fig.draw(signal)
            if log:
                log_axis(fig, 1, float(np.min(y)), float(np.max(y)), most=max(2, fig.size()[1] // 2))
            channel_axis(fig, 0, len(values), fig.size()[0])
            fig.title(("log " if log else "") + f"per channel: mean squared input ({len(values)} channels"
                      + (", bucket maxima)" if len(x) < len(values) else ")"))

        plot.plot(draw)

    # -- keys ----------------------------------------------------------------------------------------
    def action_next_kind(self) -> None:
        if not self.kinds:
            return
        self.kind = (self.kind + 1) % len(self.kinds)
        self._header()
        self._request_detail()
        if self.has_class("-table"):
            self._request_table()

    def action_threshold(self, factor: float) -> None:
        self.threshold = self.threshold.scaled(factor)
        self.update_data(self.imatrix, self.report)
        self.notify(f"rare: {self.threshold.label}", timeout=2)

    def action_toggle_table(self) -> None:
        show = not self.has_class("-table")
        self.set_class(show, "-table")
        if show:
            self._request_table()
            self.query_one("#exp-table", DataTable).focus()
        else:
            self.query_one(ExpertMap).focus()

    def action_next_sort(self) -> None:
        i = EXPERT_SORTS.index(self.sort_column) if self.sort_column in EXPERT_SORTS else -1
        self.sort_column = EXPERT_SORTS[(i + 1) % len(EXPERT_SORTS)]
        self._fill_table()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._fill_table()

    # -- per-expert table ----------------------------------------------------------------------------
    def _request_table(self) -> None:
        sel = self.query_one(ExpertMap).selected
        if sel is None or self.imatrix is None:
            return
        tensor = self._selected_tensor(sel[0])
        if tensor is not None:
            self._read_table(self.imatrix, tensor, self.threshold)

    @work(thread=True, exclusive=True, group="expert-table", exit_on_error=False, description="expert table")
    def _read_table(self, imatrix: Imatrix, tensor: str, threshold: RareThreshold) -> None:
        worker = get_current_worker()
        try:
            rows = expert_table(imatrix.entries[tensor], threshold, cancelled=lambda: worker.is_cancelled)
        except InterruptedError:
            return
        except Exception as exc:  # noqa: BLE001 - an ImatrixError or a file rewritten under us
            self.app.call_from_thread(self.notify, f"{tensor}: {exc}", title="experts", severity="error")
            return
        if not worker.is_cancelled:
            self.post_message(ExpertTableReady(tensor, rows))

    def on_expert_table_ready(self, message: ExpertTableReady) -> None:
        self.table_tensor, self.table_rows = message.tensor, message.rows
        self._fill_table()

    def _fill_table(self) -> None:
        table = self.query_one("#exp-table", DataTable)
        table.clear()
        if self.sort_column not in EXPERT_SORT_KEYS:
            return
        for row in sort_experts(self.table_rows, self.sort_column, self.sort_reverse):
            style = DEAD_STYLE if row.status == "dead" else RARE_STYLE if row.status == "rare" else ""
            cells = [Text(c, style=style, justify="right") for c in expert_cells(row)]
            cells.append(Text(row.status if row.status != "ok" else "", style=style))
            table.add_row(*cells, key=str(row.expert))
        table.border_title = (f"{self.table_tensor} · {len(self.table_rows)} experts · sorted by "
                              f"{self.sort_column}{' (reversed)' if self.sort_reverse else ''}")

    @on(DataTable.RowHighlighted, "#exp-table")
    def _table_row(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or event.row_key.value is None:
            return
        m = self.query_one(ExpertMap)
        if m.selected is not None:
            m.expert = int(event.row_key.value)  # the map's cursor follows the table's
            m.refresh()
            self._request_detail()


def _thin_max(values: np.ndarray, points: int) -> tuple[list[int], list[float]]:
    """Channel index and value, at most `points` of them: each bucket's maximum (spikes stay)."""
    n = len(values)
    if n <= points:
        return list(range(n)), values.tolist()
    size = math.ceil(n / points)
    pad = (-n) % size
    padded = np.concatenate([values, np.full(pad, -np.inf)]) if pad else values
    y = padded.reshape(-1, size).max(axis=1)
    return list(range(0, n, size)), y.tolist()


__all__ = ["ExpertMap", "ExpertsScreen", "columns_for"]
