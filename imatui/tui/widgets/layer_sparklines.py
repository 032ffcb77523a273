"""One bar row per tensor kind over the depth of the model, all on the same x axis (the layer).

The rows line up column for column, so a pattern that runs through the depth (attention sinks in
early blocks, a hot ffn_down at the end) shows as a vertical stripe. Every layer gets the same number
of cells (the row is as wide as a whole number of cells per layer allows, or several layers share a
cell when the model is deeper than the pane is wide), and a layer where the kind has no tensor (the
dense ffn of a MoE model's first blocks) is left empty, never drawn as a low value. The selected
tensor's layer is marked under the rows, on the axis, without writing over its labels.

Each row is scaled to its own range; where a metric spans a decade or more (a Gemma-like file whose
layer 0 is ten times the rest) the scale is logarithmic, so the rest of the depth is not flat.
Kinds whose numbers are identical in every layer (attn_q/k/v read the same input, ffn_gate/up too)
fold into one row that lists them.

When the file carries the collector's per-block layer similarity (imatui.layer_similarity), one more
row, "layer sim", draws it on the same axis, whatever the metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from rich.color import Color as RichColor
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from imatui import numfmt
from imatui.stats.tensor import StatsReport, TensorStats

LABEL_WIDTH_MAX = 24
SIM_LABEL = "layer sim"
BARS = " ▁▂▃▄▅▆▇█"
SCALES = ("auto", "log", "linear")
# "auto" turns logarithmic when a row's largest value is this many times its smallest
LOG_RATIO = 10.0
FLAT = 1e-3  # a row whose values all lie within this share of its largest is drawn flat


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    value: Callable[[TensorStats], float | None]
    quantity: str  # imatui.numfmt's name for how it reads
    log_ok: bool = False  # positive magnitudes, where a log scale means something


def _attr(name: str) -> Callable[[TensorStats], float | None]:
    return lambda t: getattr(t, name)


def _cossim(t: TensorStats) -> float | None:
    # llama prints 0 for block 0 (there is no previous block): that is "no value", not a cosine
    return None if t.layer == 0 or t.cossim is None else t.cossim


METRICS: list[Metric] = [
    Metric("sum", "Σ(Act²)", _attr("sum"), "sum", log_ok=True),
    Metric("mean", "μ", _attr("mean"), "mean", log_ok=True),
    Metric("max", "Max", _attr("max"), "max", log_ok=True),
    Metric("std", "σ", _attr("std"), "std", log_ok=True),
    Metric("zd", "ZD %", _attr("zd"), "zd"),
    Metric("cossim", "CosSim", _cossim, "cossim"),
    Metric("entropy", "Entropy", _attr("entropy"), "entropy"),
    Metric("entropy_norm", "E(norm) %", _attr("entropy_norm"), "entropy_norm"),
    Metric("active", "Active %", _attr("active"), "active"),
    Metric("kurtosis", "Kurtosis", _attr("kurtosis"), "kurtosis"),
    Metric("dead", "Dead", _attr("dead"), "dead"),
]


def kind_order(kind: str) -> tuple[int, str]:
    group = 0 if kind.startswith("attn") else 1 if kind.startswith("ffn") else 2
    return group, kind


# --- geometry: the same for the bars and the marker ----------------------------------------------

def layer_geometry(n_layers: int, width: int) -> tuple[int, int, int]:
    """(cells per layer, layers per cell, cells drawn) for n_layers over `width` columns: every
    layer the same number of cells, or every cell the same number of layers."""
    if n_layers <= 0 or width <= 0:
        return 0, 0, 0
    if n_layers <= width:
        per = width // n_layers
        return per, 1, per * n_layers
    group = math.ceil(n_layers / width)
    return 1, group, math.ceil(n_layers / group)


def layer_columns(n_layers: int, width: int, layer: int) -> list[int]:
    """The columns in which `layer` is drawn."""
    per, group, _ = layer_geometry(n_layers, width)
    if not per or not 0 <= layer < n_layers:
        return []
    if group == 1:
        return list(range(layer * per, (layer + 1) * per))
    return [layer // group]


def log_scale_wanted(rows: Sequence[Sequence[float | None]], metric: Metric, scale: str) -> bool:
    if scale != "auto":
        return scale == "log" and metric.log_ok
    if not metric.log_ok:
        return False
    for row in rows:
        present = [v for v in row if v is not None and math.isfinite(v)]
        if present and min(present) > 0 and max(present) / min(present) >= LOG_RATIO:
            return True
    return False


def bar_heights(values: Sequence[float | None], levels: int, log: bool) -> list[int | None]:
    """Each value as a height in 1..levels (its row's own range), None where there is no value.
    The smallest value still gets a sliver, so it reads apart from a missing layer."""
    present = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not present:
        return [None] * len(values)

    def t(v: float) -> float:
        return math.log10(v) if log else v

    lo, hi = t(min(present)), t(max(present))
    # within 0.1% of each other (RMS-normed inputs all read Σ = 64.00): flat, not the full height
    # of a float-noise difference
    flat = max(present) - min(present) <= FLAT * max(abs(max(present)), abs(min(present)))
    out: list[int | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        elif log and v <= 0:
            out.append(1)  # nothing below zero on a log axis: the floor
        elif flat:
            out.append(max(1, levels // 2))  # a flat row: half height
        else:
            out.append(1 + round((t(v) - lo) / (hi - lo) * (levels - 1)))
    return out


def cell_values(values: Sequence[float | None], width: int) -> list[float | None]:
    """The value of each drawn cell (a group's largest when layers share cells; None if all missing)."""
    per, group, cells = layer_geometry(len(values), width)
    if not per:
        return []
    if group == 1:
        return [v for v in values for _ in range(per)]
    out = []
    for c in range(cells):
        part = [v for v in values[c * group:(c + 1) * group] if v is not None and math.isfinite(v)]
        out.append(max(part) if part else None)
    return out


class LayerBars(Widget):
    """One row of bars over the layers (1 to 3 lines high), drawn by layer_geometry."""

    DEFAULT_CSS = "LayerBars { width: 1fr; height: 1; }"
    COMPONENT_CLASSES = {"layerbars--min-color", "layerbars--max-color"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data: list[float | None] = []
        self.log_scale = False

    def set_data(self, data: list[float | None], log: bool) -> None:
        self.data, self.log_scale = list(data), log
        self.refresh()

    def cells(self) -> list[int | None]:
        """The height (in eighths of a line, 1..8·lines) of each drawn cell, None for an empty one."""
        lines = max(1, self.size.height)
        return bar_heights(cell_values(self.data, self.size.width), 8 * lines, self.log_scale)

    def render(self) -> Text:
        lines = max(1, self.size.height)
        heights = self.cells()
        low = self.get_component_rich_style("layerbars--min-color").color or RichColor.parse("blue")
        high = self.get_component_rich_style("layerbars--max-color").color or RichColor.parse("magenta")
        top = 8 * lines
        styles = []
        for h in heights:
            if h is None:
                styles.append(None)
                continue
            ratio = (h - 1) / max(1, top - 1)
            styles.append(Style(color=Color.from_rich_color(low).blend(Color.from_rich_color(high), ratio)
                                .rich_color))
        text = Text(no_wrap=True, overflow="crop")
        for line in range(lines):
            floor = (lines - 1 - line) * 8  # eighths below this line
            if line:
                text.append("\n")
            for h, style in zip(heights, styles):
                if h is None:
                    text.append(" ")
                else:
                    text.append(BARS[max(0, min(8, h - floor))], style)
        return text


class LayerMarker(Widget):
    """The layer axis under the bars ("0" and the last layer at its ends) and the selected layer
    (▲N at its cells); an axis label that the marker would touch gives way."""

    DEFAULT_CSS = "LayerMarker { height: 1; width: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_layers = 0
        self.selected_layer: int | None = None

    def set(self, n_layers: int, layer: int | None) -> None:
        self.n_layers, self.selected_layer = n_layers, layer
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        _, _, drawn = layer_geometry(self.n_layers, width)
        line = [" "] * width
        caret: tuple[int, str] | None = None
        if self.selected_layer is not None:
            cols = layer_columns(self.n_layers, width, self.selected_layer)
            if cols:
                label = f"▲{self.selected_layer}"
                caret = (min(cols[0], max(0, width - len(label))), label)
        if drawn:
            first, last = "0", str(self.n_layers - 1)
            labels = [(0, first)]
            if drawn > len(first) + len(last) + 1:
                labels.append((drawn - len(last), last))
            for start, label in labels:
                end = start + len(label)
                # one blank column between an axis label and the marker
                if caret is not None and start <= caret[0] + len(caret[1]) and caret[0] <= end:
                    continue
                line[start:end] = label
        if caret is None:
            return Text("".join(line), style="dim")
        start, label = caret
        text = Text("".join(line[:start]), style="dim")
        text.append(label, style="bold reverse")
        text.append("".join(line[start + len(label):]), style="dim")
        return text


def fold_label(kinds: list[str]) -> str:
    """attn_q, attn_k, attn_v -> "attn_k/q/v"; too long -> "first +N"."""
    if len(kinds) == 1:
        return kinds[0]
    prefix = kinds[0]
    for k in kinds[1:]:
        while not k.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix[: prefix.rfind("_") + 1] if "_" in prefix else ""
    label = prefix + "/".join(k[len(prefix):] for k in kinds)
    return label if len(label) <= LABEL_WIDTH_MAX - 2 else f"{kinds[0]} +{len(kinds) - 1}"


def fold_kinds(report: StatsReport) -> list[list[str]]:
    """Kinds grouped where their tensors' numbers are identical in every layer (same input by
    construction: attn_q/k/v, ffn_gate/up), in kind_order."""
    per_kind: dict[str, dict[int, tuple]] = {}
    for t in report.tensors:
        if t.layer is not None:
            per_kind.setdefault(t.kind, {})[t.layer] = (t.n, t.sum, t.max, t.min, t.cossim, t.zd)
    groups: dict[tuple, list[str]] = {}
    for kind in sorted(per_kind, key=kind_order):
        groups.setdefault(tuple(sorted(per_kind[kind].items())), []).append(kind)
    return sorted(groups.values(), key=lambda g: kind_order(g[0]))


class LayerSparklines(VerticalScroll):
    """Σ (or another metric) per layer for each tensor kind."""

    can_focus = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metric_index = 0
        self.scale = "auto"
        self.report: StatsReport | None = None
        self.selected_layer: int | None = None
        self._groups: list[list[str]] = []
        self._labels: list[str] = []  # the rows: folded kinds, then SIM_LABEL when the file has it
        self._n_layers = 0
        self._sparks: list[LayerBars] = []
        self._values: list[Static] = []
        self.log_scale = False  # the scale in use

    @property
    def metric(self) -> Metric:
        return METRICS[self.metric_index]

    def compose(self) -> ComposeResult:
        yield Static("", id="spark-title", classes="pane-title")
        with Horizontal(classes="spark-axis"):
            yield Static("", classes="spark-label")
            yield LayerMarker(id="spark-marker")
            yield Static("", classes="spark-value")

    def cycle_metric(self, step: int = 1) -> Metric:
        self.metric_index = (self.metric_index + step) % len(METRICS)
        self._update()
        return self.metric

    def set_metric(self, key: str) -> None:
        self.metric_index = next(i for i, m in enumerate(METRICS) if m.key == key)
        self._update()

    def set_scale(self, scale: str) -> None:
        """"auto" (log where a row spans a decade), "log" or "linear"."""
        if scale not in SCALES:
            raise ValueError(scale)
        self.scale = scale
        self._update()

    def show_report(self, report: StatsReport) -> None:
        self.report = report
        self._groups = fold_kinds(report)
        self._update()

    def select_layer(self, layer: int | None) -> None:
        self.selected_layer = layer
        self._update_marker()

    def series(self) -> dict[str, list[float | None]]:
        """metric per layer for each row of kinds (None where the kind has no tensor in that layer)."""
        report = self.report
        if report is None:
            return {}
        layers = [t.layer for t in report.tensors if t.layer is not None]
        n_layers = max(layers) + 1 if layers else 0
        by_kind: dict[str, list[float | None]] = {}
        for t in report.tensors:
            if t.layer is None:
                continue
            by_kind.setdefault(t.kind, [None] * n_layers)[t.layer] = self.metric.value(t)
        return {fold_label(group): by_kind[group[0]] for group in self._groups}

    def similarity(self, n_layers: int) -> list[float | None] | None:
        """The layer similarity per layer (0..n_layers-1), or None when the file has none."""
        report = self.report
        if report is None or n_layers == 0:
            return None
        by_layer = {lay.layer: lay.layer_similarity for lay in report.layers
                    if lay.layer_similarity is not None}
        if not by_layer:
            return None
        return [by_layer.get(i) for i in range(n_layers)]

    def _rows(self) -> dict[str, list[float | None]]:
        """Every row drawn: the metric per kind, then the layer similarity when present."""
        series = self.series()
        n_layers = len(next(iter(series.values()))) if series else 0
        sims = self.similarity(n_layers)
        if sims is not None:
            series[SIM_LABEL] = sims
        return series

    def _update(self) -> None:
        series = self._rows()
        labels = list(series)
        n_layers = len(next(iter(series.values()))) if series else 0
        if labels != self._labels or n_layers != self._n_layers:
            self.query(".spark-row").remove()
            # labels as wide as the longest (within reason), so every row starts and ends in the
            # same columns
            width = min(LABEL_WIDTH_MAX, max([len(k) for k in labels] + [6]) + 2)
            rows = []
            self._sparks, self._values = [], []
            groups = {fold_label(g): g for g in self._groups}
            for name in labels:
                spark = LayerBars(classes="spark")
                value = Static("", classes="spark-value")
                label = Static(name, classes="spark-label")
                if len(groups.get(name, [])) > 1:
                    label.tooltip = "identical in every layer: " + ", ".join(groups[name])
                label.styles.width = width
                self._sparks.append(spark)
                self._values.append(value)
                rows.append(Horizontal(label, spark, value, classes="spark-row"))
            self.query_one(".spark-axis > .spark-label").styles.width = width
            if rows:
                self.mount_all(rows, before=self.query_one(".spark-axis"))
            self._labels, self._n_layers = labels, n_layers
            self.call_after_refresh(self._fit_rows)
        kinds = [v for k, v in series.items() if k != SIM_LABEL]
        self.log_scale = log_scale_wanted(kinds, self.metric, self.scale)
        for spark, (label, values) in zip(self._sparks, series.items()):
            spark.set_data(values, self.log_scale and label != SIM_LABEL)
        self._update_marker(series)

    def on_resize(self) -> None:
        self._fit_rows()

    def _fit_rows(self) -> None:
        """Taller rows (up to 3 lines) when the pane has the room: depth patterns read better with
        more than eight bar heights."""
        if not self._sparks:
            return
        room = self.size.height - 2  # title and axis
        rows = max(1, min(3, room // len(self._sparks)))
        for row in self.query(".spark-row"):
            row.styles.height = rows
        for spark in self._sparks:
            spark.styles.height = rows

    def _update_marker(self, series: dict[str, list[float | None]] | None = None) -> None:
        metric = self.metric
        scale = "log" if self.log_scale else "linear"
        title = Text.assemble(("Per layer: ", "bold"), (f" {metric.label} ", "bold reverse"),
                              (f" {scale}", "italic"), ("  m next metric", "dim"))
        self.query_one("#spark-title", Static).update(title)
        self.query_one("#spark-marker", LayerMarker).set(self._n_layers, self.selected_layer)
        if series is None:
            series = self._rows()
        for value_widget, (label, values) in zip(self._values, series.items()):
            layer = self.selected_layer
            value = values[layer] if layer is not None and layer < len(values) else None
            quantity = "layer_similarity" if label == SIM_LABEL else metric.quantity
            value_widget.update("" if value is None else numfmt.fmt(quantity, value))

    def values_at_selected_layer(self) -> dict[str, str]:
        return {label: str(w.render()) for label, w in zip(self._labels, self._values)}
