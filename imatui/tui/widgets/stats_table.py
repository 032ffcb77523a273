"""The tensor table and the per-layer table: DataTables keyed by tensor name (or layer number).

Rows are never rebuilt when a file is reloaded with the same rows in the same order: only the cells
whose text changed are updated, inside app.batch_update(), so the cursor, the scroll position and
the sort stay where the user left them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable

from imatui import numfmt
from imatui.stats.tensor import LayerStats, StatsReport, TensorStats

T = TypeVar("T")


def _text(quantity: str) -> Callable[[float | None], str]:
    """The cell text of a quantity (imatui.numfmt's one form for it); an absent value is blank."""
    def f(value: float | None) -> str:
        return "" if value is None else numfmt.fmt(quantity, value)
    return f


def _none_low(value: Any) -> Any:
    return -math.inf if value is None else value


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str
    label: str
    text: Callable[[T], str]
    sort_key: Callable[[T], Any]
    descending: bool = True  # numbers read better largest first
    justify: str = "right"
    help: str = ""
    compact: bool = False  # in the compact column set (what a quantizer looks at first)


def _tc(key: str, label: str, help: str = "", compact: bool = False) -> Column[TensorStats]:
    fmt = _text(key)
    return Column(key, label, lambda t: fmt(getattr(t, key)), lambda t: _none_low(getattr(t, key)),
                  help=help, compact=compact)


def _max_mean(t: TensorStats) -> float | None:
    return t.max / t.mean if t.mean and math.isfinite(t.mean) and t.mean > 0 else None


# llama-imatrix's columns and precision (imatui.numfmt), then ours after CosSim. `compact` marks the
# default set: the outliers a quantizer looks for (largest Σ and Max/μ, CosSim drops, dead channels,
# unused experts) fit at 80 columns; `a` shows every column.
TENSOR_COLUMNS: list[Column[TensorStats]] = [
    Column("layer", "Layer", lambda t: "-" if t.layer is None else str(t.layer),
           lambda t: (-1 if t.layer is None else t.layer, t.kind), descending=False, help="block number",
           compact=True),
    Column("kind", "Kind", lambda t: t.kind, lambda t: (t.kind, -t.sum), descending=False, justify="left",
           help="tensor kind; sorted as llama-imatrix lists them (kind, then Σ descending)", compact=True),
    _tc("sum", "Σ(Act²)", "sum of the per-channel mean squared activations", compact=True),
    _tc("min", "Min", "smallest channel value"),
    _tc("max", "Max", "largest channel value", compact=True),
    Column("max_mean", "Max/μ", lambda t: _text("max_mean")(_max_mean(t)), lambda t: _none_low(_max_mean(t)),
           help="largest channel over the mean channel: how far one channel stands out", compact=True),
    _tc("mean", "μ", "mean channel value"),
    _tc("std", "σ", "standard deviation of the channel values"),
    _tc("active", "Active", "share of channels above 1e-5"),
    _tc("n", "N", "number of values (channels × matrices)"),
    _tc("entropy", "Entropy", "entropy of the normalised values, bits"),
    _tc("entropy_norm", "E(norm)", "entropy / log2 N"),
    _tc("zd", "ZD", "share of channels with z-score > 1"),
    # lowest similarity first, as `imatui stats --sort cossim` lists them; undefined ones last
    Column("cossim", "CosSim", lambda t: _text("cossim")(t.cossim),
           lambda t: math.inf if t.cossim is None else t.cossim, descending=False,
           help="cosine with the same tensor one block earlier (sorts lowest first)", compact=True),
    _tc("skewness", "Skew", "skewness of the channel values"),
    _tc("kurtosis", "Kurt", "excess kurtosis of the channel values"),
    _tc("dead", "Dead", "channels that were never activated", compact=True),
    _tc("tokens", "Tokens", "tokens seen (largest count over the matrices)", compact=True),
]
MOE_COLUMNS: list[Column[TensorStats]] = [
    _tc("experts_unused", "Unused", "MoE experts that no token reached", compact=True),
]
ACT_COLUMNS: list[Column[TensorStats]] = [
    _tc("act_l2", "L2", "L2 distance of mean activations to the previous block"),
    _tc("act_cossim", "ActCos", "cosine of mean activations with the previous block"),
    _tc("act_ecs", "ECS", "100·exp(-0.01·L2)·|cos|^10"),
]
# the default sort of the tensor table: largest Σ first (the outliers on top)
DEFAULT_TENSOR_SORT = "sum"


def _lc(key: str, label: str, help: str = "", fmt: Callable[[Any], str] | None = None) -> Column[LayerStats]:
    fmt = fmt or _text(key)
    return Column(key, label, lambda lay: fmt(getattr(lay, key)), lambda lay: _none_low(getattr(lay, key)),
                  help=help, compact=True)


LAYER_COLUMNS: list[Column[LayerStats]] = [
    Column("layer", "Layer", lambda lay: str(lay.layer), lambda lay: lay.layer, descending=False, compact=True),
    _lc("sum", "μΣ(Act²)", "element-weighted mean Σ of the layer's tensors"),
    # llama prints the layer's mean ZD with four decimals
    _lc("zd", "μZD", "element-weighted mean ZD", lambda v: "" if v is None else numfmt.percent(v, 4)),
    _lc("cossim", "μCosSim", "element-weighted mean CosSim"),
    _lc("n_tensors", "Tensors"),
    _lc("elements", "Elements"),
]
LAYER_ACT_COLUMNS: list[Column[LayerStats]] = [
    _lc("act_l2", "L2"),
    _lc("act_cossim", "ActCos"),
    _lc("act_ecs", "ECS"),
]
# only when the file carries the collector's imatui.layer_similarity
LAYER_SIM_COLUMNS: list[Column[LayerStats]] = [
    _lc("layer_similarity", "LayerSim",
        "mean cosine of the block's input and output hidden states, from imatui collect "
        "(also the \"layer sim\" sparkline row)"),
]


def tensor_columns(report: StatsReport) -> list[Column[TensorStats]]:
    cols = list(TENSOR_COLUMNS)
    if any(t.expert_counts for t in report.tensors):
        # right after Dead: with the other "never reached" count, inside the compact set
        at = next(i for i, c in enumerate(cols) if c.key == "dead") + 1
        cols[at:at] = MOE_COLUMNS
    if report.has_activations:
        cols += ACT_COLUMNS
    return cols


def layer_columns(report: StatsReport) -> list[Column[LayerStats]]:
    cols = LAYER_COLUMNS + (LAYER_ACT_COLUMNS if report.has_activations else [])
    if any(lay.layer_similarity is not None for lay in report.layers):
        cols = cols + LAYER_SIM_COLUMNS
    return cols


_REGEX_CHARS = set("*+?[](){}|^$\\")


def name_matcher(pattern: str) -> tuple[Callable[[str], bool], str | None]:
    """A substring filter, or a regex when the text uses regex syntax beyond '.' (so that
    "blk.1." means what it says). Returns (predicate, error message or None)."""
    pattern = pattern.strip()
    if not pattern:
        return (lambda name: True), None
    if _REGEX_CHARS & set(pattern):
        try:
            rx = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            lowered = pattern.lower()
            return (lambda name: lowered in name.lower()), f"not a regex ({exc}); matching as text"
        return (lambda name: rx.search(name) is not None), None
    lowered = pattern.lower()
    return (lambda name: lowered in name.lower()), None


COLUMN_SETS = ("compact", "all")
# llama-quantize's type for a tensor that stands out (the copied --tensor-type fragment; edit at will)
OVERRIDE_TYPE = "q8_0"


class StatsTable(DataTable, Generic[T]):
    """A DataTable over objects with a column spec; sorted, filtered, keyed, updated in place.

    `spec` is every column (the palette sorts and the help list them); `shown` the column set on
    screen: the compact set by default, all of them after `a`. The leading key columns stay fixed
    when the table scrolls sideways.
    """

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        # first / last row (DataTable's own Home/End scroll sideways)
        Binding("home,g", "scroll_top", "Top", show=False, id="table.top", tooltip="first row"),
        Binding("end,G", "scroll_bottom", "Bottom", show=False, id="table.bottom", tooltip="last row"),
        # not in the footer: at 80 columns it holds the app's keys up to "q Quit" and no more
        Binding("a", "toggle_columns", "Columns", show=False, id="table.columns",
                tooltip="compact columns (the outliers) / all columns"),
        Binding("y", "copy_name", "Copy", show=False, id="table.copy_name",
                tooltip="copy the tensor name to the clipboard"),
        Binding("Y", "copy_row", "Copy row", show=False, id="table.copy_row",
                tooltip="copy the row as shown (tab separated, with the column names)"),
        Binding("o", "copy_override", "Copy --tensor-type", show=False, id="table.copy_override",
                tooltip=f"copy a llama-quantize --tensor-type NAME={OVERRIDE_TYPE} fragment for this tensor"),
    ]

    class SortChanged(Message):
        def __init__(self, table: "StatsTable", column: str, reverse: bool) -> None:
            super().__init__()
            self.table = table
            self.column = column
            self.reverse = reverse

    def __init__(self, *, id: str | None = None, default_sort: str, key_columns: int = 1,
                 default_reverse: bool = False) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.spec: list[Column[T]] = []  # every column
        self.shown: list[Column[T]] = []  # the columns on screen
        self.column_set = "compact"
        self.key_columns = key_columns
        self.objects: dict[str, T] = {}
        self.sort_column = default_sort
        self.sort_reverse = default_reverse
        self.matcher: Callable[[str], bool] = lambda name: True
        self._order: list[str] = []  # row keys as shown

    # -- data --------------------------------------------------------------------------------
    def set_data(self, spec: list[Column[T]], objects: dict[str, T]) -> None:
        """Show these objects (keyed), keeping the cursor on the same key where it still exists."""
        selected = self.selected_key
        self.spec = spec
        self.objects = objects
        if self.sort_column not in {c.key for c in spec}:
            self.sort_column = spec[0].key
        self._set_columns()
        self._show(selected)

    def _wanted_columns(self) -> list[Column[T]]:
        if self.column_set == "all":
            return list(self.spec)
        # the compact set, plus the sorted column wherever it is (a palette sort by Entropy shows it)
        return [c for c in self.spec if c.compact or c.key == self.sort_column]

    def _set_columns(self) -> bool:
        """Lay out the columns of the current set; True when they changed (rows then rebuilt)."""
        wanted = self._wanted_columns()
        if [c.key for c in wanted] == [c.key for c in self.shown] and self.columns:
            return False
        self.shown = wanted
        self.clear(columns=True)
        for col in wanted:
            self.add_column(self._label(col), key=col.key)
        self.fixed_columns = min(self.key_columns, len(wanted))
        self._order = []
        return True

    @property
    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    @property
    def shown_keys(self) -> list[str]:
        return list(self._order)

    @property
    def shown_columns(self) -> list[str]:
        return [c.key for c in self.shown]

    def cell_text(self, key: str, column: str) -> str:
        """What the cell on screen reads (the column must be in the shown set)."""
        return str(self.get_cell(key, column))

    def _label(self, col: Column[T]) -> Text:
        mark = ""
        if col.key == self.sort_column:
            desc = col.descending != self.sort_reverse
            mark = "▼" if desc else "▲"
        # a cell always reserved so the column width never changes with the marker
        label = f"{col.label}{mark or ' '}"
        return Text(label, justify=col.justify, style="bold" if mark else "")

    def _cells(self, obj: T) -> list[Text]:
        return [Text(col.text(obj), justify=col.justify) for col in self.shown]

    def _sorted_keys(self) -> list[str]:
        keys = [k for k in self.objects if self.matcher(k)]
        col = next((c for c in self.spec if c.key == self.sort_column), None)
        if col is None:
            return keys
        desc = col.descending != self.sort_reverse
        return sorted(keys, key=lambda k: col.sort_key(self.objects[k]), reverse=desc)

    def _show(self, selected: str | None, to_top: bool = False) -> None:
        """Fill the rows. The cursor stays on `selected`; with to_top the view shows the first rows
        (a new sort: its top is what the user asked to see), otherwise it follows the cursor."""
        order = self._sorted_keys()
        if order == self._order:
            # same rows in the same order: touch only the cells whose text changed
            for key in order:
                for col, cell in zip(self.shown, self._cells(self.objects[key])):
                    if str(self.get_cell(key, col.key)) != cell.plain:
                        self.update_cell(key, col.key, cell)
            if to_top:
                self.scroll_to(y=0, animate=False)
            return
        self.clear(columns=False)
        for key in order:
            self.add_row(*self._cells(self.objects[key]), key=key)
        self._order = order
        row = order.index(selected) if selected is not None and selected in order else 0
        if order:
            if to_top:
                # move the cursor without scrolling to it, then show the top of the new order
                self.cursor_coordinate = Coordinate(row, 0)
                self.call_after_refresh(self.scroll_to, y=0, animate=False, immediate=True)
            else:
                self.move_cursor(row=row, animate=False)

    # -- sorting, column sets and filtering ---------------------------------------------------
    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        """Sort by `column`; the cursor stays on its row's object and the view shows the top of the
        new order. A column outside the shown set joins it."""
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        selected = self.selected_key
        self.sort_column, self.sort_reverse = column, reverse
        if not self._set_columns():
            for col in self.shown:
                self.columns[col.key].label = self._label(col)  # type: ignore[index]
        self._show(selected, to_top=True)
        self.refresh()
        self.call_after_refresh(self._reveal_column, column)
        self.post_message(self.SortChanged(self, column, reverse))

    def _reveal_column(self, key: str) -> None:
        """Scroll sideways so that the sorted column is on screen (narrow terminals); the fixed key
        columns stay where they are, so only the columns after them count."""
        fixed = sum(col.get_render_width(self) for col in list(self.columns.values())[: self.fixed_columns])
        room = self.scrollable_content_region.width - fixed
        x = 0
        for i, (col_key, col) in enumerate(self.columns.items()):
            width = col.get_render_width(self)
            if i < self.fixed_columns:
                if col_key.value == key:
                    return
                continue
            if col_key.value == key:
                left, right = self.scroll_x, self.scroll_x + room
                if x < left or x + width > right:
                    self.scroll_to(x=max(0, x + width - room // 2), animate=False)
                return
            x += width

    def cycle_sort(self, step: int = 1) -> None:
        """The next column of the shown set."""
        keys = [c.key for c in self.shown]
        if not keys:
            return
        i = keys.index(self.sort_column) if self.sort_column in keys else -1
        self.sort_by(keys[(i + step) % len(keys)], reverse=False)

    def reverse_sort(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.sort_reverse)

    def set_column_set(self, name: str) -> None:
        if name not in COLUMN_SETS:
            raise ValueError(name)
        self.column_set = name
        selected = self.selected_key
        if self._set_columns():
            self._show(selected)

    def action_toggle_columns(self) -> None:
        self.set_column_set("all" if self.column_set == "compact" else "compact")
        self.notify(f"{self.column_set} columns ({len(self.shown)} of {len(self.spec)})", timeout=2)

    def set_filter(self, matcher: Callable[[str], bool]) -> None:
        self.matcher = matcher
        self._show(self.selected_key)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def column_help(self) -> Iterable[tuple[str, str]]:
        return [(c.label, c.help) for c in self.spec]

    # -- copy what you see --------------------------------------------------------------------
    def _copy(self, text: str, what: str) -> None:
        """To the terminal's clipboard (OSC 52: works over SSH where the terminal allows it)."""
        self.app.copy_to_clipboard(text)
        shown = text if len(text) <= 60 else text[:57] + "…"
        self.notify(shown, title=f"copied {what}", timeout=3)

    def row_text(self, key: str) -> str:
        """The row as shown: the key, then each shown column as `label=value`, tab separated."""
        obj = self.objects[key]
        return "\t".join([key] + [f"{c.label}={c.text(obj)}" for c in self.shown])

    def action_copy_name(self) -> None:
        key = self.selected_key
        if key is not None:
            self._copy(key, "name")

    def action_copy_row(self) -> None:
        key = self.selected_key
        if key is not None:
            self._copy(self.row_text(key), "row")

    def action_copy_override(self) -> None:
        key = self.selected_key
        fragment = self.override_fragment(key) if key is not None else None
        if fragment is None:
            self.notify("no tensor here to override", severity="warning", timeout=2)
            return
        self._copy(fragment, "--tensor-type (edit the type)")

    def override_fragment(self, key: str) -> str | None:
        return None


def tensor_type_fragment(name: str, quant_type: str = OVERRIDE_TYPE) -> str:
    """llama-quantize's `--tensor-type PATTERN=TYPE` for one tensor. The pattern is a regex searched
    in tensor names, so the dots are escaped (blk.1. would also match blk.10.) and the ".weight"
    suffix left out (older llama-quantize checks that the pattern ends in a tensor kind); quoted for
    the shell."""
    stem = name[: -len(".weight")] if name.endswith(".weight") else name
    return f"--tensor-type '{re.escape(stem)}={quant_type}'"


class TensorTable(StatsTable[TensorStats]):
    """One row per tensor, keyed by tensor name."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, default_sort=DEFAULT_TENSOR_SORT, key_columns=2)

    def override_fragment(self, key: str) -> str | None:
        return tensor_type_fragment(key)

    def show_report(self, report: StatsReport) -> None:
        self.set_data(tensor_columns(report), {t.name: t for t in report.tensors})


class LayerTable(StatsTable[LayerStats]):
    """One row per block: llama-imatrix's element-weighted averages, keyed by the layer number."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, default_sort="layer")

    def action_copy_name(self) -> None:
        key = self.selected_key
        if key is not None:
            self._copy(f"blk.{key}", "layer")

    def show_report(self, report: StatsReport) -> None:
        self.set_data(layer_columns(report), {str(lay.layer): lay for lay in report.layers})
