"""The detail pane: one tensor's channels drawn with plotext.

Each PlotView owns its own plotext figure (a fresh one per draw; never plotext's global figure,
which several widgets would share), builds it at the widget's size and shows it through
Text.from_ansi, so it redraws whenever Textual re-renders it (on resize too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from imatui import numfmt
from imatui.stats.tensor import TensorStats

# plotext draws a few hundred points per column at most: more only costs time
MAX_POINTS = 2048


def _figure(width: int, height: int):
    from plotext._kernel.terminal import terminal

    fig = terminal()._master  # a private figure, not plotext's module-level one
    fig._set_size(width, height)
    fig.theme("simple")  # no canvas colour: the pane's background shows through
    return fig


class PlotView(Widget):
    """A plotext chart; `draw(fig)` fills a figure built at this widget's size."""

    DEFAULT_CSS = "PlotView { width: 1fr; height: 1fr; min-width: 10; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._draw: Callable | None = None
        self._cache: tuple[tuple[int, int, int], Text] | None = None
        self._version = 0

    def plot(self, draw: Callable | None) -> None:
        self._draw = draw
        self._version += 1
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if self._draw is None or width < 12 or height < 5:
            return Text("")
        key = (width, height, self._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        fig = _figure(width, height)
        self._draw(fig)
        text = Text.from_ansi(fig.build().string(), no_wrap=True)
        self._cache = (key, text)
        return text


def log_axis(fig, axis: int, low: float, high: float, most: int = 5) -> None:
    """Ticks at round powers of ten on an axis that carries log10 of the values."""
    ticks = numfmt.log_ticks(low, high, most)
    if ticks:
        fig.ruler(axis).ticks([math.log10(t) for t in ticks], [numfmt.tick(t) for t in ticks])


def channel_axis(fig, axis: int, size: int, width: int) -> None:
    """Whole channel numbers (plotext would print 2.6e2)."""
    count = max(2, min(7, (width - 8) // 9))
    positions = sorted({int(round(x)) for x in np.linspace(0, max(size - 1, 0), count)})
    fig.ruler(axis).ticks(positions, [str(p) for p in positions])


def count_axis(fig, axis: int, top: float, height: int) -> None:
    """Whole counts, round steps (plotext prints 96.8 tokens)."""
    if not top or top <= 0:
        return
    room = max(2, height // 3)
    raw = top / room
    step = next(m * 10 ** e for e in range(0, 12) for m in (1, 2, 5) if m * 10 ** e >= raw)
    positions = list(range(0, int(top) + 1, step))
    fig.ruler(axis).ticks(positions, [str(p) for p in positions])


def _thin(values: np.ndarray) -> tuple[list[float], list[float]]:
    """x (rank) and y of sorted values, thinned to at most MAX_POINTS evenly spaced ranks."""
    n = len(values)
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).astype(np.int64))
    return idx.tolist(), values[idx].tolist()


@dataclass(frozen=True)
class ChannelSummary:
    """What the detail plots draw, computed in the reader worker (a DeepSeek MoE tensor has 1.8 M
    channel values: sorting them on the UI thread cost ~100 ms per cursor move)."""

    x: list[float]  # ranks of the thinned sorted curve (at most MAX_POINTS)
    y: list[float]  # their values, descending
    logs: np.ndarray  # log10 of every positive value, ascending (the histogram, at any bin count)
    dead: int  # finite values <= 0 (not drawn)

    @property
    def positive(self) -> int:
        return len(self.logs)

    def histogram(self, bins: int) -> tuple[list[float], list[int]]:
        """np.histogram(logs, bins, range=(min, max)) by binary search on the sorted logs."""
        lo, hi = float(self.logs[0]), float(self.logs[-1])
        if hi - lo < 1e-9:
            hi = lo + 1.0
        edges = np.histogram_bin_edges(self.logs[:1], bins=bins, range=(lo, hi))
        # bins are [a, b), the last one [a, b]: as np.histogram counts them
        idx = np.searchsorted(self.logs, edges, side="left")
        idx[0], idx[-1] = 0, len(self.logs)
        centers = ((edges[:-1] + edges[1:]) / 2).tolist()
        return centers, np.diff(idx).tolist()


def summarize_channels(values: np.ndarray) -> ChannelSummary:
    """Sort, thin and take the logs of one tensor's channel values (in a worker thread)."""
    finite = values[np.isfinite(values)]
    positive = np.sort(finite[finite > 0])[::-1]
    dead = len(finite) - len(positive)
    x, y = _thin(positive) if len(positive) else ([], [])
    logs = np.log10(positive)
    logs.sort()  # ascending; log10 of a sorted vector need not be exactly monotonic
    return ChannelSummary(x, y, logs, dead)


class DetailPane(Vertical):
    """Sorted channel values (log), their histogram, the top channels, MoE expert counts."""

    can_focus = False

    def compose(self) -> ComposeResult:
        yield Static("", id="detail-title", classes="pane-title")
        yield Static("", id="detail-top")
        with Horizontal(id="detail-plots"):
            yield PlotView(id="plot-sorted")
            yield PlotView(id="plot-hist")
        yield PlotView(id="plot-experts")

    def clear(self, message: str = "") -> None:
        self.query_one("#detail-title", Static).update(Text(message, style="dim"))
        for plot in self.query(PlotView):
            plot.plot(None)
        self.query_one("#detail-top", Static).update("")
        self.set_class(False, "-moe")

    def unavailable(self, message: str) -> None:
        """The tensor's numbers stay; its channels cannot be read now (plots give way to `message`)."""
        for plot in self.query(PlotView):
            plot.plot(None)
        self.query_one("#detail-top", Static).update(Text(message, style="italic"))
        self.set_class(False, "-moe")

    def show_tensor(self, t: TensorStats) -> None:
        """The numbers we already have; plots follow when the channels are read (show_channels)."""
        layer = "-" if t.layer is None else str(t.layer)
        shape = f"{t.n_mat}×{t.n_in}" if t.n_mat > 1 else f"{t.n_in}"
        title = Text.assemble((t.name, "bold"), f"  layer {layer} · {shape} · {t.tokens} tokens · ",
                              ("dead ", "dim"), numfmt.count(t.dead), ("  skew ", "dim"),
                              numfmt.skewness(t.skewness), ("  kurt ", "dim"), numfmt.kurtosis(t.kurtosis))
        if t.experts_unused is not None:
            title.append(f"  · {t.experts_unused} experts unused", style="bold")
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#detail-top", Static).update(self._top_text(t))

    @staticmethod
    def _top_text(t: TensorStats) -> Text:
        text = Text("top channels ", style="bold")
        for i, (idx, value) in enumerate(zip(t.top_channels, t.top_values)):
            where = f"e{idx // t.n_in}:{idx % t.n_in}" if t.n_mat > 1 else str(idx)
            share = value / t.sum * 100 if t.sum else 0.0
            if i:
                text.append(" · ", style="dim")
            text.append(where, style="bold")
            text.append(f" {numfmt.value(value)} ({share:.1f}%)")
        return text

    def show_channels(self, t: TensorStats, values: np.ndarray, counts: np.ndarray,
                      summary: ChannelSummary | None = None) -> None:
        """`summary`: summarize_channels(values), when the worker has already computed it."""
        if summary is None:
            summary = summarize_channels(values)
        dead = summary.dead

        def sorted_plot(fig) -> None:
            if summary.positive == 0:
                fig.title("no positive values")
                return
            # log10 of the values on a linear axis, labelled with round powers of ten (plotext's
            # own log axis prints 7.8 and 92.2, and ignores ticks set on it)
            signal = fig.signal(summary.x, np.log10(summary.y).tolist())
            signal.lines()
            fig.draw(signal)
            log_axis(fig, 1, min(summary.y), max(summary.y), most=max(2, fig.size()[1] // 2))
            channel_axis(fig, 0, summary.positive + dead, fig.size()[0])
            fig.title("channels sorted, log" + (f" ({dead} ≤ 0 not shown)" if dead else ""))

        def hist_plot(fig) -> None:
            if summary.positive == 0:
                fig.title("no positive values")
                return
            centers, counts_ = summary.histogram(max(5, min(40, fig.size()[0] // 2 - 4)))
            fig.draw(fig.bar(centers, counts_, orientation="vertical"))
            lo, hi = float(summary.logs[0]), float(summary.logs[-1])
            log_axis(fig, 0, 10.0 ** lo, 10.0 ** hi, most=max(2, fig.size()[0] // 8))
            count_axis(fig, 1, max(counts_), fig.size()[1])
            fig.title("histogram of the values, log")

        self.query_one("#plot-sorted", PlotView).plot(sorted_plot)
        self.query_one("#plot-hist", PlotView).plot(hist_plot)
        if t.n_mat > 1:
            per_expert = counts.astype(np.float64).tolist()

            def expert_plot(fig) -> None:
                fig.draw(fig.bar(list(range(len(per_expert))), per_expert, orientation="vertical", width=1))
                count_axis(fig, 1, max(per_expert), fig.size()[1])
                fig.title(f"tokens per expert ({sum(1 for c in per_expert if c == 0)} unused)")

            self.query_one("#plot-experts", PlotView).plot(expert_plot)
            self.set_class(True, "-moe")
        else:
            self.query_one("#plot-experts", PlotView).plot(None)
            self.set_class(False, "-moe")


