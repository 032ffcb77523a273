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
from textual.message import Message
from textual.widgets import DataTable

from imatui.printers import _pct
from imatui.stats.tensor import LayerStats, StatsReport, TensorStats

T = TypeVar("T")


def _num(fmt: str) -> Callable[[float | None], str]:
    def f(value: float | None) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return fmt % value
    return f


def _percent(value: float | None) -> str:
    # through float32 as llama.cpp rounds it, so the cells read exactly as `imatui stats` prints them
    return "" if value is None else "%.2f%%" % _pct(value)


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


def _tc(key: str, label: str, fmt: Callable[[Any], str], help: str = "") -> Column[TensorStats]:
    return Column(key, label, lambda t: fmt(getattr(t, key)), lambda t: _none_low(getattr(t, key)),
                  help=help)


# llama-imatrix's precision for its columns; our extra columns after CosSim
TENSOR_COLUMNS: list[Column[TensorStats]] = [
    Column("layer", "Layer", lambda t: "-" if t.layer is None else str(t.layer),
           lambda t: (-1 if t.layer is None else t.layer, t.kind), descending=False, help="block number"),
    Column("kind", "Kind", lambda t: t.kind, lambda t: (t.kind, -t.sum), descending=False, justify="left",
           help="tensor kind; sorted as llama-imatrix lists them (kind, then Σ descending)"),
    _tc("sum", "Σ(Act²)", _num("%.2f"), "sum of the per-channel mean squared activations"),
    _tc("min", "Min", _num("%.4f"), "smallest channel value"),
    _tc("max", "Max", _num("%.4f"), "largest channel value"),
    _tc("mean", "μ", _num("%.2f"), "mean channel value"),
    _tc("std", "σ", _num("%.2f"), "standard deviation of the channel values"),
    _tc("active", "Active", _percent, "share of channels above 1e-5"),
    _tc("n", "N", _num("%d"), "number of values (channels × matrices)"),
    _tc("entropy", "Entropy", _num("%.4f"), "entropy of the normalised values, bits"),
    _tc("entropy_norm", "E(norm)", _percent, "entropy / log2 N"),
    _tc("zd", "ZD", _percent, "share of channels with z-score > 1"),
    # lowest similarity first, as `imatui stats --sort cossim` lists them; undefined ones last
    Column("cossim", "CosSim", lambda t: _num("%.4f")(t.cossim),
           lambda t: math.inf if t.cossim is None else t.cossim, descending=False,
           help="cosine with the same tensor one block earlier (sorts lowest first)"),
    _tc("skewness", "Skew", _num("%.2f"), "skewness of the channel values"),
    _tc("kurtosis", "Kurt", _num("%.1f"), "excess kurtosis of the channel values"),
    _tc("dead", "Dead", _num("%d"), "channels that were never activated"),
    _tc("tokens", "Tokens", _num("%d"), "tokens seen (largest count over the matrices)"),
]
MOE_COLUMNS: list[Column[TensorStats]] = [
    _tc("experts_unused", "Unused", _num("%d"), "MoE experts that no token reached"),
]
ACT_COLUMNS: list[Column[TensorStats]] = [
    _tc("act_l2", "L2", _num("%.4f"), "L2 distance of mean activations to the previous block"),
    _tc("act_cossim", "ActCos", _num("%.4f"), "cosine of mean activations with the previous block"),
    _tc("act_ecs", "ECS", _num("%.4f"), "100·exp(-0.01·L2)·|cos|^10"),
]


def _lc(key: str, label: str, fmt: Callable[[Any], str], help: str = "") -> Column[LayerStats]:
    return Column(key, label, lambda lay: fmt(getattr(lay, key)), lambda lay: _none_low(getattr(lay, key)),
                  help=help)


LAYER_COLUMNS: list[Column[LayerStats]] = [
    Column("layer", "Layer", lambda lay: str(lay.layer), lambda lay: lay.layer, descending=False),
    _lc("sum", "μΣ(Act²)", _num("%.2f"), "element-weighted mean Σ of the layer's tensors"),
    _lc("zd", "μZD", lambda v: "" if v is None else "%.4f%%" % _pct(v), "element-weighted mean ZD"),
    _lc("cossim", "μCosSim", _num("%.4f"), "element-weighted mean CosSim"),
    _lc("n_tensors", "Tensors", _num("%d")),
    _lc("elements", "Elements", _num("%d")),
]
LAYER_ACT_COLUMNS: list[Column[LayerStats]] = [
    _lc("act_l2", "L2", _num("%.4f")),
    _lc("act_cossim", "ActCos", _num("%.4f")),
    _lc("act_ecs", "ECS", _num("%.4f")),
]
# only when the file carries the collector's imatui.layer_similarity
LAYER_SIM_COLUMNS: list[Column[LayerStats]] = [
    _lc("layer_similarity", "LayerSim", _num("%.4f"),
        "mean cosine of the block's input and output hidden states, from imatui collect "
        "(also the \"layer sim\" sparkline row)"),
]


def tensor_columns(report: StatsReport) -> list[Column[TensorStats]]:
    cols = list(TENSOR_COLUMNS)
    if any(t.expert_counts for t in report.tensors):
        cols += MOE_COLUMNS
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


class StatsTable(DataTable, Generic[T]):
    """A DataTable over objects with a column spec; sorted, filtered, keyed, updated in place."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    class SortChanged(Message):
        def __init__(self, table: "StatsTable", column: str, reverse: bool) -> None:
            super().__init__()
            self.table = table
            self.column = column
            self.reverse = reverse

    def __init__(self, *, id: str | None = None, default_sort: str) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.spec: list[Column[T]] = []
        self.objects: dict[str, T] = {}
        self.sort_column = default_sort
        self.sort_reverse = False
        self.matcher: Callable[[str], bool] = lambda name: True
        self._order: list[str] = []  # row keys as shown

    # -- data --------------------------------------------------------------------------------
    def set_data(self, spec: list[Column[T]], objects: dict[str, T]) -> None:
        """Show these objects (keyed), keeping the cursor on the same key where it still exists."""
        selected = self.selected_key
        if [c.key for c in spec] != [c.key for c in self.spec]:
            self.spec = spec
            self.clear(columns=True)
            for col in spec:
                self.add_column(self._label(col), key=col.key)
            self._order = []
        self.objects = objects
        if self.sort_column not in {c.key for c in spec}:
            self.sort_column = spec[0].key
        self._show(selected)

    @property
    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    @property
    def shown_keys(self) -> list[str]:
        return list(self._order)

    def cell_text(self, key: str, column: str) -> str:
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
        return [Text(col.text(obj), justify=col.justify) for col in self.spec]

    def _sorted_keys(self) -> list[str]:
        keys = [k for k in self.objects if self.matcher(k)]
        col = next((c for c in self.spec if c.key == self.sort_column), None)
        if col is None:
            return keys
        desc = col.descending != self.sort_reverse
        return sorted(keys, key=lambda k: col.sort_key(self.objects[k]), reverse=desc)

    def _show(self, selected: str | None) -> None:
        order = self._sorted_keys()
        if order == self._order:
            # same rows in the same order: touch only the cells whose text changed
            for key in order:
                for col, cell in zip(self.spec, self._cells(self.objects[key])):
                    if str(self.get_cell(key, col.key)) != cell.plain:
                        self.update_cell(key, col.key, cell)
            return
        self.clear(columns=False)
        for key in order:
            self.add_row(*self._cells(self.objects[key]), key=key)
        self._order = order
        if selected is not None and selected in order:
            self.move_cursor(row=order.index(selected), animate=False)
        elif order:
            self.move_cursor(row=0, animate=False)

    # -- sorting and filtering -------------------------------------------------------------
    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        for col in self.spec:
            self.columns[col.key].label = self._label(col)  # type: ignore[index]
        self._show(self.selected_key)
        self.refresh()
        self.call_after_refresh(self._reveal_column, column)
        self.post_message(self.SortChanged(self, column, reverse))

    def _reveal_column(self, key: str) -> None:
        """Scroll sideways so that the sorted column is on screen (narrow terminals)."""
        x = 0
        for col_key, col in self.columns.items():
            width = col.get_render_width(self)
            if col_key.value == key:
                left, right = self.scroll_x, self.scroll_x + self.scrollable_content_region.width
                if x < left or x + width > right:
                    self.scroll_to(x=max(0, x + width - self.scrollable_content_region.width // 2),
                                   animate=False)
                return
            x += width

    def cycle_sort(self, step: int = 1) -> None:
        keys = [c.key for c in self.spec]
        if not keys:
            return
        i = keys.index(self.sort_column) if self.sort_column in keys else -1
        self.sort_by(keys[(i + step) % len(keys)], reverse=False)

    def reverse_sort(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.sort_reverse)

    def set_filter(self, matcher: Callable[[str], bool]) -> None:
        self.matcher = matcher
        self._show(self.selected_key)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def column_help(self) -> Iterable[tuple[str, str]]:
        return [(c.label, c.help) for c in self.spec]


class TensorTable(StatsTable[TensorStats]):
    """One row per tensor, keyed by tensor name."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, default_sort="kind")

    def show_report(self, report: StatsReport) -> None:
        self.set_data(tensor_columns(report), {t.name: t for t in report.tensors})


class LayerTable(StatsTable[LayerStats]):
    """One row per block: llama-imatrix's element-weighted averages, keyed by the layer number."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, default_sort="layer")

    def show_report(self, report: StatsReport) -> None:
        self.set_data(layer_columns(report), {str(lay.layer): lay for lay in report.layers})
