"""The diff view: two imatrix files compared tensor by tensor, from the keyboard.

Self-contained: the screen loads both files and computes the diff in a thread worker, which posts
the result back as a message; the per-channel vectors of the selected tensor are read in another
worker. The numbers all come from imatui.stats.diff (the same ones `imatui diff --format` prints);
the screen only lays them out.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.renderables._blend_colors import blend_colors
from textual.renderables.sparkline import Sparkline as SparklineRenderable
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static
from textual.worker import Worker, WorkerState, get_current_worker

from imatui import numfmt
from imatui.diff_printers import (channel_label, expert_diff_line, fmt_num, fmt_shift, fmt_sum, fmt_value,
                                  header_lines, sort_rows)
from imatui.errors import ImatrixError, TruncatedError
from imatui.imatrix import Imatrix
from imatui.stats.diff import (ChannelPair, DiffReport, TensorDiff, channel_pair, compared_pairs,
                               compiled_loops_loaded, compute_diff, load_compiled_loops, worth_compiling)
from imatui.stats.experts import TensorExpertDiff, diff_tensor_experts
from imatui.tui.widgets.channel_plot import log_axis
from imatui.tui.widgets.flags import MILD, STRONG, flag_style
from imatui.tui.widgets.stats_table import name_matcher  # the main table's filter, same rules
from imatui.tui.widgets.stats_table import tensor_type_fragment

MODES = ("A", "B", "Δ")
# plotext draws at most two points per terminal column: more only costs time
POINTS_PER_COLUMN = 2


# --- messages from the workers --------------------------------------------------------------------

@dataclass
class DiffReady(Message):
    a: Imatrix
    b: Imatrix
    report: DiffReport


@dataclass
class DiffStatus(Message):
    text: str


@dataclass
class DiffProgress(Message):
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DiffProgress)


@dataclass
class DiffFailed(Message):
    message: str  # the ImatrixError's one line, "PATH: problem"


@dataclass
class DiffRewritten(Message):
    name: str  # the tensor whose channels could not be read: its file changed under the lazy reader


@dataclass
class DiffExperts(Message):
    """A MoE tensor compared expert by expert (imatui.stats.experts), for the detail title."""

    diff: TensorExpertDiff


@dataclass
class DiffChannels(Message):
    pair: ChannelPair

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DiffChannels)


# --- columns: (key, label per mode, sort key per mode, cell per mode) -------------------------------

def _sum_delta(t: TensorDiff) -> float | None:
    return None if t.sum_a is None or t.sum_b is None else t.sum_b - t.sum_a


def _top_delta(t: TensorDiff) -> float | None:
    return None if t.top_value_a is None or t.top_value_b is None else t.top_value_b - t.top_value_a


# differences read as the quantity does, with a sign (imatui.numfmt)
_signed = numfmt.signed(numfmt.value)
_signed_sum = numfmt.signed(numfmt.sum2)


@dataclass(frozen=True)
class Column:
    key: str
    labels: tuple[str, str, str]  # in modes A, B, Δ
    sorts: tuple[str, str, str]  # diff_printers.SORT_KEYS column per mode
    cells: tuple[Callable[[TensorDiff], str], ...]  # per mode (one entry: the same in every mode)

    def label(self, mode: int) -> str:
        return self.labels[mode]

    def sort(self, mode: int) -> str:
        return self.sorts[mode]

    def cell(self, t: TensorDiff, mode: int) -> str:
        return self.cells[mode if len(self.cells) > 1 else 0](t)


COLUMNS: list[Column] = [
    Column("name", ("Tensor",) * 3, ("name",) * 3, (lambda t: t.name,)),
    Column("sum", ("Σ A", "Σ B", "Σ B−A"), ("sum_a", "sum_b", "sum_delta"),
           (lambda t: fmt_sum(t.sum_a), lambda t: fmt_sum(t.sum_b), lambda t: _signed_sum(_sum_delta(t)))),
    Column("ratio", ("B/A",) * 3, ("sum_ratio",) * 3, (lambda t: fmt_num(t.sum_ratio, ".3f"),)),
    Column("cossim", ("CosSim",) * 3, ("cossim",) * 3, (lambda t: fmt_num(t.cossim, ".4f"),)),
    Column("js", ("JS",) * 3, ("js",) * 3, (lambda t: fmt_num(t.js, ".4f"),)),
    Column("rank", ("Rank A", "Rank B", "Shift"), ("rank_a", "rank_b", "rank_shift"),
           (lambda t: fmt_num(t.rank_a, "d"), lambda t: fmt_num(t.rank_b, "d"),
            lambda t: fmt_shift(t.rank_shift))),
    Column("channel", ("Top ch",) * 3, ("top_channel",) * 3,
           (channel_label,)),
    Column("top", ("Top A", "Top B", "Top B−A"), ("top_value_a", "top_value_b", "top_delta"),
           (lambda t: fmt_value(t.top_value_a), lambda t: fmt_value(t.top_value_b),
            lambda t: _signed(_top_delta(t)))),
    Column("note", ("Note",) * 3, ("name",) * 3, (lambda t: "" if t.comparable else t.reason or "",)),
]
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
SORTABLE = [c.key for c in COLUMNS if c.key != "note"]


def _bucket(values: np.ndarray, n: int, signed: bool = False) -> tuple[list[float], list[float]]:
    """At most n points: the largest value (largest |value| when signed) of each run of channels,
    so that a single outlier channel stays visible at any width. x is the run's first channel."""
    size = len(values)
    if size <= n:
        return list(range(size)), values.tolist()
    edges = np.linspace(0, size, n + 1).astype(np.int64)
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        part = values[lo:hi]
        i = int(np.argmax(np.abs(part) if signed else part))
        xs.append(int(lo + i))
        ys.append(float(part[i]))
    return xs, ys


# --- widgets --------------------------------------------------------------------------------------

class OverlayPlot(Widget):
    """A plotext chart of one tensor's channels: A and B overlaid, or B − A.

    The widget owns its figure (a fresh private one per build, never plotext's global figure) and
    builds it at its own size in render(), so a resize redraws it; the ANSI text goes through
    Text.from_ansi.
    """

    DEFAULT_CSS = "OverlayPlot { width: 1fr; height: 1fr; min-height: 6; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pair: ChannelPair | None = None
        self.mode = 0
        self.labels = ("A", "B")
        self._cache: tuple[tuple, Text] | None = None
        self._version = 0
        self.draws = 0  # how many times a figure was built (tests check that a resize redraws)
        self.legend: list[tuple[str, str]] = []  # (label, Rich colour) per series drawn

    def show(self, pair: ChannelPair | None, mode: int, labels: tuple[str, str]) -> None:
        self.pair, self.mode, self.labels = pair, mode, labels
        self._version += 1
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if self.pair is None or width < 16 or height < 7:
            return Text("")
        key = (width, height, self._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self.legend = []
        figure = Text.from_ansi(self.build(width, height - 1), no_wrap=True)
        text = Text(no_wrap=True)
        for i, (label, rgb) in enumerate(self.legend):
            text.append("   " if i else " ")
            text.append("━━ ", style=f"bold {rgb}")
            text.append(label)
        text.append("\n")
        text.append_text(figure)
        self._cache = (key, text)
        return text

    def _series(self, fig, xs: list, ys: list, label: str) -> None:
        """Draw one series and note its colour for the legend line above the figure (plotext's own
        legend box sits inside the canvas, over the very outliers this pane is for)."""
        from plotext._settings.themes import themes

        sequence = themes["simple"]["sequence"]
        fig.draw(fig.signal(xs, ys).lines(True))
        pixel = sequence[len(self.legend) % len(sequence)]
        # the figure reaches the screen as ANSI palette codes, which Textual maps through its own
        # ANSI theme: style the legend with the same code, not with plotext's idea of its RGB
        code = re.search(r"38;5;(\d+)", str(pixel))
        r, g, b = pixel.foreground()
        self.legend.append((label, f"color({code.group(1)})" if code else f"rgb({r},{g},{b})"))

    def build(self, width: int, height: int) -> str:
        from plotext._kernel.terminal import terminal

        fig = terminal()._master  # a private figure for this widget and this build
        fig._set_size(width, height)
        fig.theme("simple")
        pair = self.pair
        self.draws += 1
        n = max(8, (width - 10) * POINTS_PER_COLUMN)
        # a side without values (missing, or every count 0) is not drawn: min() of it would raise
        va = pair.a if pair.a is not None and len(pair.a) else None
        vb = pair.b if pair.b is not None and len(pair.b) else None
        if va is None or vb is None:
            side = va if va is not None else vb
            if side is None:
                fig.title(f"no data in {self.labels[0]} or {self.labels[1]}")
                return fig.build().string()
            self._ticks(fig, len(side), width)
            xs, ys = _bucket(side, n)
            shown, empty = (0, 1) if va is not None else (1, 0)
            self._series(fig, xs, ys, self.labels[shown])
            self._title(fig, f"no data in {self.labels[empty]}: only {self.labels[shown]} drawn", width)
            return fig.build().string()
        self._ticks(fig, max(len(pair.a), len(pair.b)), width)
        experts = f" · {len(pair.experts)} experts × {pair.n_in}" if len(pair.experts) > 1 else ""
        if self.mode == 2 and pair.a.shape == pair.b.shape:
            xs, ys = _bucket(pair.b - pair.a, n, signed=True)
            self._series(fig, xs, ys, f"{self.labels[1]} − {self.labels[0]}")
            self._title(fig, "mean importance B − A per channel" + experts, width)
            return fig.build().string()
        xa, ya = _bucket(pair.a, n)
        xb, yb = _bucket(pair.b, n)
        positive = min(min(ya), min(yb)) > 0
        if positive:
            # log10 on a linear axis with round power-of-ten ticks (plotext's log axis prints 7.8)
            low, high = min(min(ya), min(yb)), max(max(ya), max(yb))
            ya, yb = np.log10(ya).tolist(), np.log10(yb).tolist()
            log_axis(fig, 1, low, high, most=max(2, height // 3))
        # always A first: each side keeps its colour whichever values the table shows
        for xs, ys, label in ((xa, ya, self.labels[0]), (xb, yb, self.labels[1])):
            self._series(fig, xs, ys, label)
        title = "mean importance per channel" + (", log" if positive else "")
        if pair.a.shape != pair.b.shape:
            title = "shapes differ: each on its own channels"
        self._title(fig, title + experts, width)
        return fig.build().string()

    @staticmethod
    def _title(fig, text: str, width: int) -> None:
        # plotext leaves out a title wider than the figure: cut it to fit instead
        room = max(8, width - 4)
        fig.title(text if len(text) <= room else text[:room - 1] + "…")


    @staticmethod
    def _ticks(fig, size: int, width: int) -> None:
        """Whole channel numbers on the x axis (plotext would print 2.6e2)."""
        count = max(2, min(7, (width - 8) // 9))
        positions = sorted({int(round(x)) for x in np.linspace(0, max(size - 1, 0), count)})
        fig.ruler(0).ticks(positions, [str(p) for p in positions])


class _FixedScaleRenderable(SparklineRenderable):
    """Textual's sparkline drawn on a fixed 0..top scale instead of its data's own min..max, so that
    rows of different kinds compare, and 1e-15 of float noise between identical files stays flat."""

    def __init__(self, data, *, top: float, **kwargs) -> None:
        super().__init__(data, **kwargs)
        self.top = top

    def __rich_console__(self, console, options):
        width = self.width or options.max_width
        buckets = list(self._buckets(list(self.data), num_buckets=width)) if self.data else []
        if not buckets:
            yield Segment(" " * width)
            return
        low, high = self.min_color.color, self.max_color.color
        step = len(buckets) / width
        for column in range(width):
            value = self.summary_function(buckets[int(column * step)])
            ratio = min(1.0, max(0.0, value / self.top))
            bar = self.BARS[min(len(self.BARS) - 1, int(ratio * len(self.BARS)))]
            yield Segment(bar, Style.from_color(blend_colors(low, high, ratio)))


class FixedScaleSparkline(Sparkline):
    """A Sparkline (same CSS, same bucketing) whose bars share one absolute scale."""

    def __init__(self, data: list[float], top: float, **kwargs) -> None:
        super().__init__(data, **kwargs)
        self.top = top

    def on_resize(self) -> None:
        # the caret under the sparklines is placed by their width: known only once laid out
        for caret in self.screen.query(LayerCaret):
            caret.refresh_caret()

    def render(self):
        renderable = super().render()
        return _FixedScaleRenderable(renderable.data, top=self.top, width=renderable.width,
                                     height=1, min_color=renderable.min_color.color,
                                     max_color=renderable.max_color.color,
                                     summary_function=renderable.summary_function)


def layer_columns(n_layers: int, width: int, layer: int) -> list[int]:
    """The columns where a Sparkline of n_layers points at `width` draws `layer` (its bucketing)."""
    if n_layers <= 0 or width <= 0 or not 0 <= layer < n_layers:
        return []
    buckets = [[i for i in range(int(Fraction(n_layers, width) * b), int(Fraction(n_layers, width) * (b + 1)))]
               for b in range(width)]
    buckets = [b for b in buckets if b]
    step = len(buckets) / width
    return [c for c in range(width) if layer in buckets[int(c * step)]]


def dissimilarity(cosines: list[float | None]) -> list[float]:
    # a layer without a comparable tensor draws as no difference; the "min" label says where it is
    return [0.0 if c is None else max(0.0, 1.0 - c) for c in cosines]


class KindSparkline(Horizontal):
    """kind label, a Sparkline of 1 − cosine over the layers, and where the kind differs most."""

    DEFAULT_CSS = """
    KindSparkline { height: 1; }
    KindSparkline > .kind { width: 12; color: $text-muted; }
    KindSparkline.-selected > .kind { color: $accent; text-style: bold; }
    KindSparkline > Sparkline { width: 1fr; height: 1; }
    KindSparkline > .worst { width: 16; padding-left: 1; }
    """

    def __init__(self, kind: str, cosines: list[float | None], top: float = 1.0, label_width: int = 12,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.cosines = cosines
        self.top = top
        self.label_width = label_width

    @property
    def data(self) -> list[float]:
        return dissimilarity(self.cosines)

    def compose(self) -> ComposeResult:
        label = Label(self.kind, classes="kind")
        label.styles.width = self.label_width  # every row's sparkline starts in the same column
        yield label
        yield FixedScaleSparkline(self.data, self.top, summary_function=max)
        known = [(c, i) for i, c in enumerate(self.cosines) if c is not None]
        worst = f"min {min(known)[0]:.3f} @{min(known)[1]}" if known else "—"
        yield Label(worst, classes="worst")


class LayerCaret(Static):
    """A caret under the sparklines at the selected tensor's layer."""

    DEFAULT_CSS = "LayerCaret { height: 1; color: $accent; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.n_layers = 0
        self.at_layer: int | None = None
        self.label_width = 12  # the kind labels' width, set with the sparklines
        self._retries = 0

    def point(self, n_layers: int, layer: int | None) -> None:
        self.n_layers, self.at_layer = n_layers, layer
        self._retries = 0
        self.refresh_caret()

    def on_resize(self) -> None:
        self.refresh_caret()

    def refresh_caret(self) -> None:
        sparks = list(self.screen.query(FixedScaleSparkline)) if self.is_mounted else []
        # every row's sparkline has the same width; one scrolled out of view (the list scrolls to the
        # selected kind) may not be laid out yet and reads 0, so take any that has a width
        spark = next((sp for sp in sparks if sp.size.width), None)
        if self.at_layer is None or spark is None:
            self.update("")
            if self.at_layer is not None and self.is_mounted and self._retries < 20:
                # sparklines just mounted: their widths come with the next layout
                self._retries += 1
                self.call_after_refresh(self.refresh_caret)
            return
        columns = layer_columns(self.n_layers, spark.size.width, self.at_layer)
        if not columns:
            self.update("")
            return
        line = [" "] * (self.label_width + spark.size.width)
        for c in columns:
            line[self.label_width + c] = "▼"
        self.update("".join(line).rstrip() + f" layer {self.at_layer}")


class DiffTable(DataTable):
    """The diff's table: the tensor name stays fixed when it scrolls sideways; Home/End and g/G go to
    the first and last row; y copies the tensor name."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("home,g", "scroll_top", "Top", show=False, id="diff.top", tooltip="first row"),
        Binding("end,G", "scroll_bottom", "Bottom", show=False, id="diff.bottom", tooltip="last row"),
        Binding("y", "copy_name", "Copy", show=False, id="diff.copy_name",
                tooltip="copy the tensor name to the clipboard"),
        Binding("o", "copy_override", "Copy --tensor-type", show=False, id="diff.copy_override",
                tooltip="copy a llama-quantize --tensor-type fragment for this tensor"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.fixed_columns = 1

    def _cursor_key(self) -> str | None:
        if not self.row_count or not 0 <= self.cursor_row < self.row_count:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def _copy(self, text: str, what: str) -> None:
        self.app.copy_to_clipboard(text)  # OSC 52: works over SSH where the terminal allows it
        self.notify(text, title=f"copied {what}", timeout=3)

    def action_copy_name(self) -> None:
        key = self._cursor_key()
        if key is not None:
            self._copy(key, "name")

    def action_copy_override(self) -> None:
        key = self._cursor_key()
        if key is not None:
            self._copy(tensor_type_fragment(key), "--tensor-type (edit the type)")


# --- palette commands ("diff: …") ----------------------------------------------------------------

class DiffCommands(Provider):
    """The diff view's actions in the command palette, namespaced "diff: …"."""

    def _commands(self) -> list[tuple[str, str, Callable[[], None]]]:
        screen = self.screen
        if not isinstance(screen, DiffScreen):
            return []
        commands = [
            ("diff: next most different tensor", "jump to the tensor with the next lower cosine",
             lambda: screen.action_jump(1)),
            ("diff: previous most different tensor", "jump back to a more different tensor",
             lambda: screen.action_jump(-1)),
            ("diff: toggle A / B / Δ values", "show the values of A, of B, or B − A",
             screen.action_toggle_values),
            ("diff: swap A and B", "compare the other way round", screen.action_swap),
            ("diff: filter tensors", "regex or plain text on the tensor name", screen.action_filter),
            ("diff: reverse sort order", "", screen.action_reverse_sort),
            ("diff: close", "back to where the diff was opened from", screen.action_close),
        ]
        for key in SORTABLE:
            label = COLUMN_BY_KEY[key].label(screen.mode)
            commands.append((f"diff: sort by {label}", f"sort the table by the {label} column",
                             lambda key=key: screen.sort_by(key)))
        return commands

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


# --- the screen -----------------------------------------------------------------------------------

class DiffScreen(Screen):
    """Two imatrix files side by side: one row per tensor, most different first."""

    DEFAULT_CSS = """
    DiffScreen { layout: vertical; }
    DiffScreen #diff-header { height: auto; max-height: 6; padding: 0 1; background: $boost; }
    DiffScreen #diff-table { height: 1fr; min-height: 6; }
    DiffScreen #diff-status { height: 1; padding: 0 1; color: $text-muted; background: $boost; }
    DiffScreen #diff-bottom { height: 45%; min-height: 10; max-height: 16; }
    DiffScreen #diff-sparks { width: 62; max-width: 55%; padding: 0 1; border-right: vkey $foreground 20%; }
    DiffScreen #diff-sparks .title { color: $text-muted; text-style: bold; }
    DiffScreen #diff-spark-rows { height: 1fr; scrollbar-size-vertical: 1; }
    DiffScreen #diff-detail { width: 1fr; padding: 0 1; }
    DiffScreen #diff-detail-title { height: auto; max-height: 6; }
    DiffScreen #diff-filter { dock: bottom; display: none; }
    DiffScreen #diff-filter.-visible { display: block; }
    """

    COMMANDS = {DiffCommands}

    BINDINGS = [
        Binding("escape", "close", "Close", id="diff.close", tooltip="Close the diff (or the filter box)"),
        Binding("q", "close", "Close", show=False, id="diff.quit", tooltip="Close the diff"),
        Binding("n", "jump(1)", "Next diff", id="diff.next",
                tooltip="Jump to the next most different tensor (lower cosine)"),
        Binding("N", "jump(-1)", "Prev diff", id="diff.previous",
                tooltip="Jump to the previous, more different tensor"),
        Binding("right_square_bracket", "jump(1)", "Next diff", show=False, id="diff.next_alt",
                tooltip="Jump to the next most different tensor"),
        Binding("left_square_bracket", "jump(-1)", "Prev diff", show=False, id="diff.previous_alt",
                tooltip="Jump to the previous, more different tensor"),
        Binding("v", "toggle_values", "A/B/Δ", id="diff.values",
                tooltip="Show the values of A, of B, or their difference"),
        Binding("s", "cycle_sort(1)", "Sort", id="diff.sort", tooltip="Sort by the next column"),
        Binding("S", "cycle_sort(-1)", "Sort back", show=False, id="diff.sort_back",
                tooltip="Sort by the previous column"),
        Binding("r", "reverse_sort", "Reverse", id="diff.reverse", tooltip="Reverse the sort order"),
        Binding("x", "swap", "Swap A/B", id="diff.swap", tooltip="Swap A and B and compare again"),
        Binding("slash", "filter", "Filter", id="diff.filter",
                tooltip="Show only tensors whose name matches (text, or a regex with regex syntax)"),
    ]

    def __init__(self, a_path: str, b_path: str, chunk_size: int = 512, **kwargs) -> None:
        super().__init__(**kwargs)
        self.a_path = str(a_path)
        self.b_path = str(b_path)
        self.chunk_size = chunk_size
        self.report: DiffReport | None = None
        self.a: Imatrix | None = None
        self.b: Imatrix | None = None
        self.error: str | None = None
        self.computing = False  # a worker is reading the files and comparing them
        self.mode = 0  # index into MODES
        self.sort_column = "cossim"  # a COLUMNS key
        self.sort_reverse = False
        self.filter_text = ""
        self.filter_error: str | None = None  # the filter looked like a regex but is not one
        self.shown: list[TensorDiff] = []  # rows in table order
        self.selected: str | None = None
        self._detail_text: Text | None = None  # the detail title before the experts line

    # --- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(Text(f"A: {self.a_path}\nB: {self.b_path}\nreading both files…"), id="diff-header")
        yield DiffTable(id="diff-table")
        yield Static("", id="diff-status")
        with Horizontal(id="diff-bottom"):
            yield Vertical(Label("1 − cosine per layer (higher: A and B disagree)", classes="title"),
                           LayerCaret(id="diff-caret"), VerticalScroll(id="diff-spark-rows"),
                           id="diff-sparks")
            with Vertical(id="diff-detail"):
                yield Static("", id="diff-detail-title")
                yield OverlayPlot(id="diff-plot")
        yield Input(placeholder="filter tensor names: text, or a regex when it uses regex syntax "
                                "(enter applies, escape clears)", id="diff-filter")
        yield Footer()

    def on_mount(self) -> None:
        # no LoadingIndicator: its animation repaints on the UI thread and competes with the numpy
        # worker for the GIL (two 1 GB files: 19-26 s with it, 13-18 s without, 11 s in the CLI, on a
        # busy 2-core machine); the status line counts tensors instead
        self.computing = True
        self.sub_title = "diff"
        self._compute()

    # --- workers ----------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def _compute(self) -> None:
        from imatui.formats import load

        worker = get_current_worker()
        try:
            a = load(self.a_path, chunk_size=self.chunk_size)
            b = load(self.b_path, chunk_size=self.chunk_size)
            step = max(1, (len(a) + len(b)) // 100)  # about a hundred progress messages at most
            if worth_compiling(compared_pairs(a, b)) and not compiled_loops_loaded():
                # numba's start (~0.7 s), or its compile after an install (~3 s)
                self.post_message(DiffStatus("loading the compare loops (the first diff after an install "
                                             "compiles them)…"))
                load_compiled_loops()

            def progress(done: int, total: int) -> None:
                if done % step == 0 or done == total:
                    self.post_message(DiffProgress(done, total))

            report = compute_diff(a, b, progress=progress, cancelled=lambda: worker.is_cancelled)
        except InterruptedError:
            return
        except ImatrixError as exc:
            self.post_message(DiffFailed(str(exc)))
            return
        except OSError as exc:
            self.post_message(DiffFailed(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")))
            return
        if not worker.is_cancelled:
            self.post_message(DiffReady(a, b, report))

    @work(thread=True, exclusive=True, group="diff-detail", exit_on_error=False)
    def _read_channels(self, name: str) -> None:
        try:
            pair = channel_pair(self.a, self.b, name)
        except TruncatedError:
            # the file changed size or mtime since the diff was computed: being rewritten (a
            # collector's checkpoint), not damaged; the detail pane says so, no red error
            if not get_current_worker().is_cancelled:
                self.post_message(DiffRewritten(name))
            return
        except ImatrixError as exc:
            self.post_message(DiffFailed(str(exc)))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(DiffChannels(pair))

    @work(thread=True, exclusive=True, group="diff-experts", exit_on_error=False, description="experts")
    def _read_experts(self, name: str) -> None:
        a, b = self.a, self.b
        ea = None if a is None else a.entries.get(name)
        eb = None if b is None else b.entries.get(name)
        if ea is None or eb is None or ea.n_mat < 2 or ea.shape != eb.shape:
            return
        report = self.report  # its engine computed each expert's cosine: nothing to read then
        cos = None if report is None else report.expert_cos.get(name)
        try:
            diff = diff_tensor_experts(ea, eb, cos)
        except TruncatedError:
            return  # being rewritten: _read_channels says so
        except ImatrixError as exc:
            self.post_message(DiffFailed(str(exc)))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(DiffExperts(diff))

    @on(DiffExperts)
    def _on_experts(self, message: DiffExperts) -> None:
        if message.diff.name != self.selected or self._detail_text is None:
            return
        text = self._detail_text.copy()
        text.append("\n" + expert_diff_line(message.diff), style="dim")
        self.query_one("#diff-detail-title", Static).update(text)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # anything the workers did not expect: say so, keep the app running
        if event.state == WorkerState.ERROR and event.worker.group in ("diff", "diff-detail", "diff-experts"):
            self._failed(f"{type(event.worker.error).__name__}: {event.worker.error}")

    @on(DiffStatus)
    def _on_status(self, message: DiffStatus) -> None:
        self.query_one("#diff-status", Static).update(message.text)

    @on(DiffProgress)
    def _on_progress(self, message: DiffProgress) -> None:
        self.query_one("#diff-status", Static).update(
            f"comparing tensors: {message.done} / {message.total}")

    @on(DiffFailed)
    def _on_failed(self, message: DiffFailed) -> None:
        self._failed(message.message)

    def _failed(self, text: str) -> None:
        self.error = text
        if self.report is not None:  # a failed swap: the table still shows the earlier comparison
            self.a_path, self.b_path = self.report.a, self.report.b
        self.computing = False
        if self.report is None:
            self.query_one("#diff-header", Static).update(
                Text.assemble(f"A: {self.a_path}\nB: {self.b_path}\n", ("cannot compare: ", "bold red"), text))
        self.notify(text, title="diff", severity="error", timeout=8)

    @on(DiffReady)
    def _on_ready(self, message: DiffReady) -> None:
        self.a, self.b, self.report = message.a, message.b, message.report
        self.error = None
        self.query_one("#diff-header", Static).update(self._header_text())
        self._build_sparklines()
        table = self.query_one(DataTable)
        self.computing = False
        self._populate()
        table.focus()
        name = self._cursor_name()
        if name is not None:
            self._select(name)  # a new report (after a swap): same tensor, new numbers

    @on(DiffRewritten)
    def _on_rewritten(self, message: DiffRewritten) -> None:
        if message.name != self.selected:
            return
        title = self.query_one("#diff-detail-title", Static)
        text = Text.assemble((message.name, "bold"), "  ",
                             ("file is being rewritten…", "italic yellow"))
        title.update(text)
        self.query_one(OverlayPlot).show(None, self.mode, ("A", "B"))

    @on(DiffChannels)
    def _on_channels(self, message: DiffChannels) -> None:
        if message.pair.name == self.selected:
            self._plot(message.pair)

    # --- header and sparklines --------------------------------------------------------------------

    def _header_text(self) -> Text:
        lines = header_lines(self.report, compact=True)
        text = Text()
        for i, line in enumerate(lines):
            if i:
                text.append("\n")
            if line.startswith("differs:"):
                text.append("differs:", style="bold yellow")
                text.append(line[len("differs:"):])
            elif line.startswith("same "):
                head, _, rest = line.partition(" · ")
                text.append(head, style="dim")
                text.append(" · " + rest if rest else "")
            elif line[:2] in ("A:", "B:"):
                text.append(line[:2], style="bold")
                text.append(line[2:])
            else:
                text.append(line, style="dim" if line.startswith("same") else "")
        return text

    def _build_sparklines(self) -> None:
        box = self.query_one("#diff-spark-rows", VerticalScroll)
        for old in box.query(KindSparkline):
            old.remove()
        report = self.report
        # one scale for every row (the largest 1 − cos), at least 0.001 so that float noise stays flat
        series = {"all layers": [lay.cossim for lay in report.layers], **report.by_kind}
        top = max([1e-3] + [d for cos in series.values() for d in dissimilarity(cos)])
        width = min(18, max(len(kind) for kind in series) + 1)  # DeepSeek's ffn_gate_shexp: 15
        rows = [KindSparkline(kind, cos, top, width) for kind, cos in series.items()]
        self.query_one(LayerCaret).label_width = width
        box.mount_all(rows)

    # --- the table --------------------------------------------------------------------------------

    def _visible(self) -> list[TensorDiff]:
        match, self.filter_error = name_matcher(self.filter_text)
        column = COLUMN_BY_KEY[self.sort_column]
        rows = [t for t in self.report.tensors if match(t.name)]
        return sort_rows(rows, column.sort(self.mode), reverse=self.sort_reverse)

    def _populate(self, to_top: bool = False) -> None:
        """(Re)fill the table: columns labelled for the current mode, rows sorted and filtered;
        the cursor stays on the tensor it was on when that tensor is still shown. With to_top (a new
        sort) the view shows the top of the new order, not the cursor's neighbourhood."""
        table = self.query_one(DataTable)
        keep = self._cursor_name()
        self.shown = self._visible()
        with self.app.batch_update():
            table.clear(columns=True)
            for col in COLUMNS:
                label = col.label(self.mode)
                if col.key == self.sort_column:
                    label += " ▼" if not self.sort_reverse else " ▲"
                table.add_column(Text(label, justify="left" if col.key in ("name", "note") else "right"),
                                 key=col.key)
            for t in self.shown:
                cells = [self._styled(col, t) for col in COLUMNS]
                table.add_row(*cells, key=t.name)
        names = [t.name for t in self.shown]
        row = names.index(keep) if keep in names else 0
        if names:
            table.move_cursor(row=row, animate=False, scroll=not to_top)
            if to_top:
                # after the cursor watcher's own scroll-into-view, which also waits for the refresh
                table.call_after_refresh(table.scroll_to, x=0, y=0, animate=False, immediate=True)
        self._update_status()
        if not names:
            self.selected = None
            self._show_detail(None)

    def _cursor_name(self) -> str | None:
        """The tensor under the table's cursor now (RowHighlighted may not have arrived yet)."""
        row = self.query_one(DataTable).cursor_row
        return self.shown[row].name if self.shown and 0 <= row < len(self.shown) else self.selected

    def _styled(self, col: Column, t: TensorDiff) -> Text:
        text = col.cell(t, self.mode)
        if col.key == "name":
            return Text(text, style="" if t.comparable else "dim")
        if col.key == "note":
            return Text(text, style="italic yellow")
        style = ""
        if col.key == "cossim" and t.cossim is not None:
            style = flag_style(self.app, STRONG if t.cossim < 0.5 else MILD if t.cossim < 0.9 else 0)
        return Text(text, style=style, justify="right")

    def _update_status(self) -> None:
        report = self.report
        col = COLUMN_BY_KEY[self.sort_column]
        parts = [f"values: {MODES[self.mode]}",
                 f"sort: {col.label(self.mode)}{' (reversed)' if self.sort_reverse else ''}",
                 f"{len(self.shown)} of {len(report.tensors)} tensors"]
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}" + (f" ({self.filter_error})" if self.filter_error else ""))
        self.query_one("#diff-status", Static).update("  ·  ".join(parts))

    @on(DataTable.RowHighlighted, "#diff-table")
    def _on_highlight(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or event.row_key.value is None:
            return
        name = event.row_key.value
        if name == self.selected:  # already shown or being read (a re-sort keeps the cursor's row)
            return
        self._select(name)

    def _select(self, name: str) -> None:
        self.selected = name
        t = self.report.tensor(name)
        self._show_detail(t)
        for row in self.query(KindSparkline):
            row.set_class(row.kind == t.kind, "-selected")
            if row.kind == t.kind:  # many kinds (DeepSeek has 15): keep the selected one in view
                self.query_one("#diff-spark-rows", VerticalScroll).scroll_to_widget(row, animate=False)
        self.query_one(LayerCaret).point(len(self.report.layers), t.layer)

    @on(DataTable.HeaderSelected, "#diff-table")
    def _on_header(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key not in SORTABLE:
            return
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self._populate(to_top=True)

    # --- the detail pane --------------------------------------------------------------------------

    def _show_detail(self, t: TensorDiff | None) -> None:
        title = self.query_one("#diff-detail-title", Static)
        plot = self.query_one(OverlayPlot)
        if t is None:
            title.update("")
            plot.show(None, self.mode, ("A", "B"))
            return
        text = Text.assemble((t.name, "bold"))
        if t.comparable:
            # short lines, one fact each: they fit the pane's width at 120 columns without wrapping
            text.append(f"  cos {t.cossim:.4f} · JS {t.js:.4f}\n")
            text.append(f"Σ {fmt_sum(t.sum_a)} → {fmt_sum(t.sum_b)} · rank {t.rank_a} → {t.rank_b}\n", style="dim")
            text.append(f"top channel {channel_label(t)}: {fmt_value(t.top_value_a)} → {fmt_value(t.top_value_b)}"
                        f" ({t.top_share_delta * 100:+.1f} pts of Σ)", style="dim")
            if t.experts_skipped:
                n = t.experts_skipped
                text.append(f"\n{n} expert{'' if n == 1 else 's'} without tokens in A or B left out", style="dim")
        else:
            text.append(f"  not comparable: {t.reason}", style="yellow")
        title.update(text)
        self._detail_text = text
        self._read_channels(t.name)
        if t.comparable and (t.shape_a or (1, 0))[0] > 1:
            self._read_experts(t.name)  # MoE: a line comparing the experts, when read

    def _plot(self, pair: ChannelPair) -> None:
        self.query_one(OverlayPlot).show(pair, self.mode, ("A", "B"))

    # --- actions ----------------------------------------------------------------------------------

    def action_close(self) -> None:
        box = self.query_one("#diff-filter", Input)
        if box.has_class("-visible"):
            self._close_filter(clear=box.has_focus)
            return
        self.app.pop_screen()

    def action_jump(self, step: int) -> None:
        if self.report is None:
            return
        visible = {t.name for t in self.shown}
        order = [t.name for t in self.report.most_different() if t.name in visible]
        if not order:
            self.notify("no comparable tensor is shown", severity="warning")
            return
        current = self._cursor_name()
        if current in order:
            i = order.index(current) + step
            if not 0 <= i < len(order):
                self.notify("this is the most different tensor" if step < 0 else
                            "this is the most similar tensor", timeout=2)
                return
        else:
            i = 0
        name = order[i]
        table = self.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(name), animate=False)
        t = self.report.tensor(name)
        self.notify(f"#{i + 1} most different: {name} (cos {t.cossim:.4f})", timeout=2)

    def action_swap(self) -> None:
        self.a_path, self.b_path = self.b_path, self.a_path
        self.computing = True
        self.query_one("#diff-status", Static).update("comparing tensors…")
        self._compute()

    def action_toggle_values(self) -> None:
        if self.report is None:
            return
        self.mode = (self.mode + 1) % len(MODES)
        self._populate()
        plot = self.query_one(OverlayPlot)
        if plot.pair is not None:
            plot.show(plot.pair, self.mode, plot.labels)

    def action_cycle_sort(self, step: int) -> None:
        if self.report is None:
            return
        i = SORTABLE.index(self.sort_column) if self.sort_column in SORTABLE else 0
        self.sort_column, self.sort_reverse = SORTABLE[(i + step) % len(SORTABLE)], False
        self._populate(to_top=True)

    def sort_by(self, key: str) -> None:
        """Sort by a column (a COLUMNS key) in its natural direction."""
        if self.report is None or key not in SORTABLE:
            return
        self.sort_column, self.sort_reverse = key, False
        self._populate(to_top=True)

    def action_reverse_sort(self) -> None:
        if self.report is None:
            return
        self.sort_reverse = not self.sort_reverse
        self._populate(to_top=True)

    def action_filter(self) -> None:
        box = self.query_one("#diff-filter", Input)
        box.add_class("-visible")
        box.value = self.filter_text
        box.focus()

    @on(Input.Changed, "#diff-filter")
    def _on_filter_changed(self, event: Input.Changed) -> None:
        if self.report is not None and event.value != self.filter_text:
            self.filter_text = event.value
            self._populate()

    @on(Input.Submitted, "#diff-filter")
    def _on_filter_submitted(self, event: Input.Submitted) -> None:
        self._close_filter(clear=False)

    def _close_filter(self, clear: bool) -> None:
        box = self.query_one("#diff-filter", Input)
        box.remove_class("-visible")
        if clear and self.filter_text:
            self.filter_text = ""
            box.value = ""
            if self.report is not None:
                self._populate()
        self.query_one(DataTable).focus()
