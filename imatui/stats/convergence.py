"""Convergence of a collection: is more calibration data still changing the importance matrix?

Between two checkpoints of the same collection (a live file reloaded, or llama-imatrix's NAME.at_N
snapshots), each tensor's per-channel mean importance is compared by cosine similarity. The mean
of a channel pools every matrix of the tensor: sum over rows of sums2 divided by the sum of counts
(for a dense tensor simply sums2 / count; for MoE a token-weighted average over the experts), so the
state kept per checkpoint is one small vector per tensor, whatever the file size.

Pure numpy; no Textual. The app and the CLI read the same numbers.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from imatui.imatrix import Entry, Imatrix
from imatui.stats import engine
from imatui.stats.experts import SlowExpert, routing_counts, slowest_experts

MOST_MOVED = 5
MIN_STEP_SECONDS = 1.0


def channel_means(imatrix: Imatrix, cancelled: Callable[[], bool] | None = None,
                  fork: bool = False) -> dict[str, np.ndarray]:
    """Per tensor, the per-channel mean importance (float64, n_in); tensors never hit are left out.

    Read by the engine of `imatui stats` (imatui.stats.engine): tensors of one shape in batches,
    block by block, the sums over the matrices in float64. `cancelled()` is polled between blocks
    (InterruptedError); `fork`: in worker processes (only a single-threaded caller may ask).
    """
    totals = {name: float(np.sum(e.counts)) for name, e in imatrix.entries.items()}
    names = [name for name, t in totals.items() if t > 0]
    threads = engine.default_threads()
    batches = [[_MeansColumn(n, imatrix.entries[n], totals[n]) for n in chunk]
               for chunk in engine.group_by_shape(names, lambda n: imatrix.entries[n].shape, threads)]
    res = engine.run_all(means_batch, batches, None, cancelled, None, threads, fork)
    return {name: res[name].means for name in names}  # in the file's order


@dataclass
class _MeansColumn:
    name: str
    entry: Entry
    total: float  # Σ counts over the matrices


@dataclass
class _Means:
    name: str
    means: np.ndarray


def means_batch(cols: list[_MeansColumn], path: str | None, cancelled: Callable[[], bool] | None,
                scratch: dict | None = None, sub_elements: int | None = None) -> list[_Means]:
    """engine.run_all's job: each tensor's column sums over its matrices (float64) / its total count."""
    if scratch is None:
        scratch = {}
    entries = [c.entry for c in cols]
    lay = engine.Layout.of(entries, engine.SUB_ELEMENTS if sub_elements is None else sub_elements)
    K, w, q = lay.K, lay.w, lay.q
    acc = np.zeros((K, q, w))  # piece j of a matrix row: channels j*w .. (j+1)*w
    with engine.BlockReader(lay, entries, cancelled, scratch) as reader:
        for r0, r1, raw in reader.blocks():
            for s0, s1, part in reader.subs(r0, r1, raw):
                p3 = part.reshape(K, s1 - s0, w)
                if s1 - s0 <= 16:  # a few rows: added one by one (float32 into float64, one sweep each)
                    for r in range(s0, s1):
                        np.add(acc[:, r % q], p3[:, r - s0], out=acc[:, r % q])
                    continue
                for j in range(q):  # the rows of piece j in this sub-block: every q-th from the first
                    first = (j - s0) % q
                    if first < s1 - s0:
                        acc[:, j] += np.add.reduce(p3[:, first::q], axis=1, dtype=np.float64)
    return [_Means(c.name, acc[k].reshape(-1) / c.total) for k, c in enumerate(cols)]


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine similarity in float64; None when either vector is zero or the lengths differ."""
    if a.shape != b.shape:
        return None
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or not (math.isfinite(na) and math.isfinite(nb)):
        return None
    return float(np.dot(a, b) / (na * nb))


@dataclass
class Checkpoint:
    """One state of the collection: chunks seen so far, when it was written, its channel means."""

    chunk_count: int
    time: float | None  # seconds since the epoch (file mtime), None when unknown
    means: dict[str, np.ndarray] = field(repr=False)
    label: str = ""
    expert_counts: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # MoE: per layer


@dataclass
class Step:
    """The change from one checkpoint to the next."""

    from_chunks: int
    to_chunks: int
    cossim: dict[str, float]  # per tensor (tensors present and non-zero in both)
    min: float | None
    median: float | None
    min_tensor: str | None
    most_moved: list[tuple[str, float]]  # lowest cosine first
    seconds: float | None  # time between the two checkpoints
    slowest_experts: list[SlowExpert] = field(default_factory=list)  # MoE: fewest tokens gained first

    @property
    def chunks_per_minute(self) -> float | None:
        # under a second between checkpoints is no collection's pace: copied files, not a run
        if self.seconds is None or self.seconds < MIN_STEP_SECONDS or self.to_chunks <= self.from_chunks:
            return None
        return (self.to_chunks - self.from_chunks) * 60.0 / self.seconds


def compare(prev: Checkpoint, new: Checkpoint, most_moved: int = MOST_MOVED) -> Step:
    cos: dict[str, float] = {}
    for name, a in prev.means.items():
        b = new.means.get(name)
        if b is None:
            continue
        c = cosine(a, b)
        if c is not None:
            cos[name] = c
    values = np.array(list(cos.values()), dtype=np.float64)
    ranked = sorted(cos.items(), key=lambda kv: (kv[1], kv[0]))
    seconds = None
    if prev.time is not None and new.time is not None:
        seconds = new.time - prev.time
    return Step(
        from_chunks=prev.chunk_count,
        to_chunks=new.chunk_count,
        cossim=cos,
        min=float(values.min()) if values.size else None,
        median=float(np.median(values)) if values.size else None,
        min_tensor=ranked[0][0] if ranked else None,
        most_moved=ranked[:most_moved],
        seconds=seconds,
        slowest_experts=slowest_experts(prev.expert_counts, new.expert_counts, most_moved),
    )


class ConvergenceSeries:
    """Checkpoints in the order they arrive, and the step between each consecutive pair.

    `add` ignores a checkpoint whose chunk count is not larger than the last one's (a reload of the
    same data); a chunk count that goes down means a new collection started in the same file, so
    the series starts again.
    """

    def __init__(self, most_moved: int = MOST_MOVED) -> None:
        self.checkpoints: list[Checkpoint] = []
        self.steps: list[Step] = []
        self.most_moved = most_moved

    def __len__(self) -> int:
        return len(self.checkpoints)

    def add_checkpoint(self, checkpoint: Checkpoint) -> Step | None:
        if self.checkpoints:
            last = self.checkpoints[-1]
            if checkpoint.chunk_count == last.chunk_count:
                return None
            if checkpoint.chunk_count < last.chunk_count:
                self.checkpoints.clear()
                self.steps.clear()
        self.checkpoints.append(checkpoint)
        if len(self.checkpoints) < 2:
            return None
        step = compare(self.checkpoints[-2], checkpoint, self.most_moved)
        self.steps.append(step)
        return step

    def insert_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Put a checkpoint in chunk order (a snapshot file noticed late); False when that count is known."""
        if any(c.chunk_count == checkpoint.chunk_count for c in self.checkpoints):
            return False
        if not self.checkpoints or checkpoint.chunk_count > self.checkpoints[-1].chunk_count:
            self.add_checkpoint(checkpoint)
            return True
        self.checkpoints.append(checkpoint)
        self.checkpoints.sort(key=lambda c: c.chunk_count)
        self.steps = [compare(a, b, self.most_moved) for a, b in zip(self.checkpoints, self.checkpoints[1:])]
        return True

    def add(self, imatrix: Imatrix, when: float | None = None, label: str = "",
            cancelled: Callable[[], bool] | None = None) -> Step | None:
        """Add a loaded imatrix; `when` defaults to its file's mtime."""
        if when is None and imatrix.path is not None:
            try:
                when = os.stat(imatrix.path).st_mtime
            except OSError:
                when = None
        return self.add_checkpoint(Checkpoint(int(imatrix.chunk_count), when, channel_means(imatrix, cancelled),
                                              label or (imatrix.path.name if imatrix.path else ""),
                                              routing_counts(imatrix)))

    @property
    def last(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def last_step(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def mins(self) -> list[float]:
        return [s.min for s in self.steps if s.min is not None]

    def medians(self) -> list[float]:
        return [s.median for s in self.steps if s.median is not None]

    def chunks_per_minute(self) -> float | None:
        """Growth over the last step (None until two checkpoints with distinct times)."""
        for step in reversed(self.steps):
            rate = step.chunks_per_minute
            if rate is not None:
                return rate
        return None

    def since_last(self, now: float | None = None) -> float | None:
        """Seconds since the last checkpoint was written."""
        last = self.last
        if last is None or last.time is None:
            return None
        return max(0.0, (time.time() if now is None else now) - last.time)


def series_from_files(paths: Sequence[str | Path], chunk_size: int = 512,
                      load: Callable[..., Imatrix] | None = None) -> ConvergenceSeries:
    """A series from snapshot files (NAME.at_10 NAME.at_20 ...), ordered by their chunk counts."""
    if load is None:
        from imatui.formats import load as load_file

        load = load_file
    loaded = [load(p, chunk_size=chunk_size) for p in paths]
    loaded.sort(key=lambda im: im.chunk_count)
    series = ConvergenceSeries()
    for im in loaded:
        series.add(im)
    return series


def format_duration(seconds: float | None) -> str:
    """Short human form for the header: 45s, 12m05s, 3h02m."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(chunks_per_minute: float | None) -> str:
    if chunks_per_minute is None:
        return "–"
    return f"{chunks_per_minute:.1f}/min" if chunks_per_minute < 100 else f"{chunks_per_minute:.0f}/min"


def sparkline_values(values: Iterable[float]) -> list[float]:
    """Cosines turned into 'how much moved' (1 - cos), so a Sparkline's bars shrink as data converges."""
    return [max(0.0, 1.0 - v) for v in values]
