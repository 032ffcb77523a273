"""One Sparkline per tensor kind over the depth of the model, all on the same x axis (the layer).

The rows line up column for column, so a pattern that runs through the depth (attention sinks in
early blocks, a hot ffn_down at the end) shows as a vertical stripe. The selected tensor's layer is
marked with a caret under the sparklines, at the columns the Sparkline draws that layer in.

When the file carries the collector's per-block layer similarity (imatui.layer_similarity), one more
row, "layer sim", draws it on the same axis, whatever the metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Sparkline, Static

from imatui.stats.tensor import StatsReport, TensorStats

LABEL_WIDTH_MAX = 22
SIM_LABEL = "layer sim"
SIM_FMT = "%.4f"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    value: Callable[[TensorStats], float | None]
    fmt: str


def _attr(name: str, scale: float = 1.0) -> Callable[[TensorStats], float | None]:
    def get(t: TensorStats) -> float | None:
        v = getattr(t, name)
        return None if v is None else v * scale
    return get


def _cossim(t: TensorStats) -> float | None:
    # llama prints 0 for block 0 (there is no previous block): that is "no value", not a cosine
    return None if t.layer == 0 or t.cossim is None else t.cossim


METRICS: list[Metric] = [
    Metric("sum", "Σ(Act²)", _attr("sum"), "%.5g"),
    Metric("mean", "μ", _attr("mean"), "%.4g"),
    Metric("max", "Max", _attr("max"), "%.5g"),
    Metric("std", "σ", _attr("std"), "%.4g"),
    Metric("zd", "ZD %", _attr("zd", 100.0), "%.2f%%"),
    Metric("cossim", "CosSim", _cossim, "%.4f"),
    Metric("entropy", "Entropy", _attr("entropy"), "%.3f"),
    Metric("entropy_norm", "E(norm) %", _attr("entropy_norm", 100.0), "%.2f%%"),
    Metric("active", "Active %", _attr("active", 100.0), "%.2f%%"),
    Metric("kurtosis", "Kurtosis", _attr("kurtosis"), "%.1f"),
    Metric("dead", "Dead", _attr("dead"), "%d"),
]


def kind_order(kind: str) -> tuple[int, str]:
    group = 0 if kind.startswith("attn") else 1 if kind.startswith("ffn") else 2
    return group, kind


def layer_columns(n_layers: int, width: int, layer: int) -> list[int]:
    """The columns at which textual's Sparkline draws `layer` out of n_layers points at `width`
    (its bucketing: Fraction steps, stretched when there are fewer points than columns)."""
    if n_layers <= 0 or width <= 0 or not 0 <= layer < n_layers:
        return []
    if n_layers <= width:
        step = Fraction(n_layers, width)
        return [c for c in range(width) if int(step * c) == layer]
    step = Fraction(n_layers, width)
    return [b for b in range(width) if int(step * b) <= layer < int(step * (b + 1))]


class LayerMarker(Widget):
    """A caret line under the sparklines at the selected layer, with the layer axis."""

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
        line = [" "] * width
        if self.n_layers and width:
            first, last = "0", str(self.n_layers - 1)
            line[: len(first)] = first
            if width > len(first) + len(last) + 1:
                line[width - len(last):] = last
        text = Text("".join(line), style="dim")
        if self.selected_layer is not None:
            cols = layer_columns(self.n_layers, width, self.selected_layer)
            if cols:
                caret = f"▲{self.selected_layer}"
                start = min(cols[0], max(0, width - len(caret)))
                text = Text("".join(line[:start]), style="dim")
                text.append(caret, style="bold reverse")
                rest = start + len(caret)
                text.append("".join(line[rest:]), style="dim")
        return text


class LayerSparklines(VerticalScroll):
    """Σ (or another metric) per layer for each tensor kind."""

    can_focus = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metric_index = 0
        self.report: StatsReport | None = None
        self.selected_layer: int | None = None
        self._kinds: list[str] = []
        self._labels: list[str] = []  # the rows: the kinds, then SIM_LABEL when the file has it
        self._n_layers = 0
        self._sparks: list[Sparkline] = []
        self._values: list[Static] = []

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

    def show_report(self, report: StatsReport) -> None:
        self.report = report
        self._update()

    def select_layer(self, layer: int | None) -> None:
        self.selected_layer = layer
        self._update_marker()

    def series(self) -> dict[str, list[float | None]]:
        """metric per layer for each kind (None where the kind has no tensor in that layer)."""
        report = self.report
        if report is None:
            return {}
        layers = [t.layer for t in report.tensors if t.layer is not None]
        n_layers = max(layers) + 1 if layers else 0
        out: dict[str, list[float | None]] = {}
        for t in report.tensors:
            if t.layer is None:
                continue
            out.setdefault(t.kind, [None] * n_layers)[t.layer] = self.metric.value(t)
        return {k: out[k] for k in sorted(out, key=kind_order)}

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
        kinds = list(series)
        n_layers = len(next(iter(series.values()))) if series else 0
        if kinds != self._labels or n_layers != self._n_layers:
            self.query(".spark-row").remove()
            # labels as wide as the longest kind (within reason), so every sparkline starts and
            # ends in the same columns
            width = min(LABEL_WIDTH_MAX, max([len(k) for k in kinds] + [6]) + 2)
            rows = []
            self._sparks, self._values = [], []
            for kind in kinds:
                spark = Sparkline([], summary_function=max, classes="spark")
                value = Static("", classes="spark-value")
                label = Static(kind, classes="spark-label")
                label.styles.width = width
                self._sparks.append(spark)
                self._values.append(value)
                rows.append(Horizontal(label, spark, value, classes="spark-row"))
            self.query_one(".spark-axis > .spark-label").styles.width = width
            if rows:
                self.mount_all(rows, before=self.query_one(".spark-axis"))
            self._labels, self._n_layers = kinds, n_layers
            self._kinds = [k for k in kinds if k != SIM_LABEL]
            self.call_after_refresh(self._fit_rows)
        for spark, values in zip(self._sparks, series.values()):
            present = [v for v in values if v is not None and math.isfinite(v)]
            floor = min(present) if present else 0.0
            # a kind missing from a layer is drawn at the floor, so the columns stay aligned
            spark.data = [floor if v is None or not math.isfinite(v) else v for v in values]
        self._update_marker(series)

    def on_resize(self) -> None:
        self._fit_rows()

    def _fit_rows(self) -> None:
        """Taller sparklines (up to 3 lines) when the pane has the room: depth patterns read
        better with more than eight bar heights."""
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
        title = Text.assemble(("Per layer: ", "bold"), (f" {metric.label} ", "bold reverse"),
                              ("  m next metric", "dim"))
        self.query_one("#spark-title", Static).update(title)
        self.query_one("#spark-marker", LayerMarker).set(self._n_layers, self.selected_layer)
        if series is None:
            series = self._rows()
        for value_widget, (label, values) in zip(self._values, series.items()):
            layer = self.selected_layer
            value = values[layer] if layer is not None and layer < len(values) else None
            fmt = SIM_FMT if label == SIM_LABEL else metric.fmt
            value_widget.update("" if value is None else fmt % value)

    def values_at_selected_layer(self) -> dict[str, str]:
        return {label: str(w.render()) for label, w in zip(self._labels, self._values)}
