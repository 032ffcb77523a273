"""Per-tensor and per-layer statistics reports, numerically as llama-imatrix --show-statistics.

llama's per-tensor numbers come from the batched engine (imatui.stats.batched, exact to the float32
digit); here they become TensorStats, with what llama does not print (skewness, kurtosis, expert
counts, the activation statistics of in_sum, in float64) and the per-layer aggregates, which llama
accumulates in float32 in its table's order.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from imatui.errors import CorruptError
from imatui.imatrix import Imatrix, split_name
from imatui.stats import checks
from imatui.stats.batched import run_all
from imatui.stats.engine import default_threads, plan_batches

# ECS = K * exp(-alpha * L2) * |cos|^gamma (llama.cpp imatrix README, "preferred" mode)
ECS_K, ECS_ALPHA, ECS_GAMMA = 100.0, 0.01, 10.0

_F32 = np.float32
_BLK = re.compile(r"(?:^|\.)blk\.(\d+)\.")


@dataclass
class TensorStats:
    name: str
    layer: int | None
    kind: str
    n_mat: int
    n_in: int
    # llama-imatrix --show-statistics, over the per-channel means sums2 / counts
    sum: float
    min: float
    max: float
    mean: float
    std: float
    active: float  # fraction of values > 1e-5
    n: int
    entropy: float  # bits
    entropy_norm: float  # entropy / log2(n), fraction
    zd: float  # fraction with z-score > 1
    cossim: float | None  # cosine of raw sums2 with blk N-1's; 0 in block 0 (as llama); None when undefined
    # beyond llama.cpp
    skewness: float | None
    kurtosis: float | None  # excess kurtosis
    dead: int  # channels whose mean squared input is exactly 0
    tokens: int  # largest per-matrix count
    skipped_matrices: int  # matrices with count 0, left out as llama.cpp does
    top_channels: list[int] = field(default_factory=list)  # flat indices (expert * n_in + channel)
    top_values: list[float] = field(default_factory=list)
    expert_counts: list[int] | None = None  # MoE: tokens per expert
    experts_unused: int | None = None  # MoE: experts never hit
    # activation statistics, when the file has in_sum (llama.cpp README's preferred mode)
    act_mean: float | None = None
    act_entropy: float | None = None
    act_entropy_norm: float | None = None
    act_zd: float | None = None
    act_l2: float | None = None
    act_cossim: float | None = None
    act_ecs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerStats:
    layer: int
    sum: float  # element-weighted mean of Σ(Act²) over the layer's tensors (llama's μΣ(Act²))
    zd: float  # element-weighted mean ZD, fraction
    cossim: float | None  # element-weighted mean CosSim
    n_tensors: int
    elements: int
    act_l2: float | None = None
    act_cossim: float | None = None
    act_ecs: float | None = None
    # the collector's block input/output cosine (ik_llama.cpp's --layer-similarity), from metadata
    layer_similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SkippedTensor:
    name: str
    reason: str


@dataclass
class StatsReport:
    file: str
    format: str
    chunk_count: int
    chunk_size: int
    datasets: list[str]
    tensors: list[TensorStats]  # llama's order: kind ascending, then Σ descending
    layers: list[LayerStats]
    skipped: list[SkippedTensor] = field(default_factory=list)
    skipped_matrices: int = 0
    has_activations: bool = False

    def tensor(self, name: str) -> TensorStats | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "datasets": list(self.datasets),
            "tensors": [t.to_dict() for t in self.tensors],
            "layers": [lay.to_dict() for lay in self.layers],
            "skipped": [asdict(s) for s in self.skipped],
            "skipped_matrices": self.skipped_matrices,
            "has_activations": self.has_activations,
        }


def _template(name: str) -> tuple[str, int]:
    m = _BLK.search(name)
    if not m:
        return name, -1
    return name[: m.start(1)] + "{}" + name[m.end(1) :], int(m.group(1))


def _entropy_bits(w: np.ndarray) -> float:
    total = float(w.sum(dtype=np.float64))
    if total <= 0:
        return 0.0
    p = w[w > 0].astype(np.float64) / total
    return float(-(p * np.log2(p)).sum())


def _activation_stats(ts: TensorStats, act_full: np.ndarray, live: np.ndarray, prev_act: np.ndarray | None,
                      path: str | None) -> None:
    """llama.cpp's activation statistics ("preferred" mode) from the mean activations, into ts."""
    a = act_full.reshape(ts.n_mat, ts.n_in)[live].reshape(-1)
    if not np.all(np.isfinite(a)):
        raise CorruptError(checks.nonfinite_activations_message(ts.name), path)
    ts.act_mean = float(a.mean())
    ts.act_entropy = _entropy_bits(a * a)
    ts.act_entropy_norm = ts.act_entropy / math.log2(a.size) if a.size > 1 else 0.0
    sd = float(a.std())
    ts.act_zd = float(np.count_nonzero(np.abs((a - a.mean()) / sd) > 1) / a.size) if sd > 0 else 0.0
    if prev_act is not None and prev_act.size == act_full.size:
        diff = act_full - prev_act
        ts.act_l2 = float(np.sqrt(diff @ diff))
        n1, n2 = float(act_full @ act_full), float(prev_act @ prev_act)
        if n1 > 0 and n2 > 0:
            ts.act_cossim = float(np.clip((act_full @ prev_act) / math.sqrt(n1 * n2), -1.0, 1.0))
        elif n1 == 0 and n2 == 0:
            ts.act_cossim = 1.0
        if ts.act_cossim is not None:
            ts.act_ecs = ECS_K * math.exp(-ECS_ALPHA * ts.act_l2) * abs(ts.act_cossim) ** ECS_GAMMA


def compute_stats(
    imatrix: Imatrix,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    fork: bool = False,
) -> StatsReport:
    """Every per-tensor and per-layer statistic of `imatrix`, reading each tensor once.

    `progress(done, total)` is called after each tensor; `cancelled()` is polled between tensors and
    a True stops the pass early (returning None is not an option: it raises InterruptedError).
    `fork`: compute in worker processes (only a single-threaded caller such as the CLI may ask).
    """
    path = None if imatrix.path is None else str(imatrix.path)
    names = list(imatrix.entries)
    order = sorted(names, key=lambda nm: _template(nm))
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], len(order))

    # llama's statistics, batched by shape (see imatui.stats.batched), exact to the float32 digit
    threads = default_threads()
    res = run_all(plan_batches(order, imatrix.entries, _template, threads), path, cancelled, tick, threads, fork)
    for name in order:
        if res[name].error:
            raise CorruptError(res[name].error, path)
    results: dict[str, TensorStats] = {}
    skipped: list[SkippedTensor] = []
    for name in order:
        r, e = res[name], imatrix.entries[name]
        if r.skipped:
            skipped.append(SkippedTensor(name, "every matrix has a zero count (no tokens reached it)"))
            continue
        layer, kind = split_name(name)
        ts = TensorStats(
            name=name, layer=layer, kind=kind, n_mat=e.n_mat, n_in=e.n_in,
            sum=r.total, min=r.vmin, max=r.vmax, mean=r.mean, std=r.dev, active=r.active, n=r.n,
            entropy=r.entropy, entropy_norm=r.entropy_norm, zd=r.zd,
            cossim=0.0 if layer is None else r.cossim,
            skewness=r.skewness, kurtosis=r.kurtosis, dead=r.dead, tokens=int(e.counts.max()),
            skipped_matrices=int(np.count_nonzero(e.counts <= 0)),
            top_channels=r.top_channels, top_values=r.top_values,
        )
        if e.n_mat > 1:
            ts.expert_counts = [int(c) for c in e.counts]
            ts.experts_unused = ts.skipped_matrices
        results[name] = ts

    # activation statistics (in_sum), llama's "preferred" mode: one more pass over the tensors
    act_pairs: dict[int, list[float]] = {}
    if imatrix.has_sums:
        _activation_pass(imatrix, order, results, act_pairs, path, cancelled)

    # llama's order: kind ascending, then Σ descending (its comparator also ties on name order)
    tensors = sorted(results.values(), key=lambda t: (t.kind, -np.float32(t.sum), t.name))
    layers = _layer_stats(tensors, act_pairs)
    sims = layer_similarities(imatrix.metadata)
    if sims is not None:
        for ls in layers:
            if ls.layer < len(sims):
                ls.layer_similarity = sims[ls.layer]
    return StatsReport(
        file=path or "",
        format=imatrix.format,
        chunk_count=imatrix.chunk_count,
        chunk_size=imatrix.chunk_size,
        datasets=list(imatrix.datasets),
        tensors=tensors,
        layers=layers,
        skipped=skipped,
        skipped_matrices=sum(t.skipped_matrices for t in tensors),
        has_activations=imatrix.has_sums,
    )


KEY_LAYER_SIMILARITY = "imatui.layer_similarity"  # as imatui.collect.run writes it


def layer_similarities(metadata: dict[str, Any]) -> list[float | None] | None:
    """Per block, the mean cosine between its input and output hidden states, as `imatui collect`
    stores it (a float array, one value per block); None when absent or not a list of numbers."""
    value = metadata.get(KEY_LAYER_SIMILARITY)
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) if math.isfinite(float(v)) else None for v in value]


def _activation_pass(imatrix: Imatrix, order: list[str], results: dict[str, TensorStats],
                     act_pairs: dict[int, list[float]], path: str | None,
                     cancelled: Callable[[], bool] | None) -> None:
    """act_* of every tensor with in_sum, and the per-layer sums for llama's compute_layer_statistics."""
    prev_template, prev_layer, prev_act = None, None, None
    for name in order:
        if cancelled is not None and cancelled():
            raise InterruptedError("statistics cancelled")
        e = imatrix.entries[name]
        template, blk = _template(name)
        prev = prev_act if (template == prev_template and prev_layer is not None
                            and blk == prev_layer + 1) else None
        act_full = None
        sums = e.sums
        if sums is not None:
            live = e.counts > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                act_full = np.where(live[:, None], sums.astype(np.float64)
                                    / np.where(live, e.counts, 1)[:, None], 0.0).reshape(-1)
            ts = results.get(name)
            if ts is not None:
                _activation_stats(ts, act_full, live, prev, path)
                if prev is not None and prev.size == act_full.size and blk > 0:
                    # the layer-level distances (llama's compute_layer_statistics) pool the pairs
                    diff = act_full - prev
                    acc = act_pairs.setdefault(blk, [0.0, 0.0, 0.0, 0.0])
                    acc[0] += float(act_full @ prev)
                    acc[1] += float(act_full @ act_full)
                    acc[2] += float(prev @ prev)
                    acc[3] += float(diff @ diff)
        prev_template, prev_layer, prev_act = template, blk, act_full


def _layer_stats(tensors: list[TensorStats], act_pairs: dict[int, list[float]]) -> list[LayerStats]:
    """Element-weighted averages per block, accumulated in float32 in the table's order as llama does."""
    acc: dict[int, list[Any]] = {}
    for t in tensors:
        if t.layer is None:
            continue
        a = acc.setdefault(t.layer, [_F32(0), _F32(0), _F32(0), 0, 0, False])
        a[0] = _F32(a[0] + _F32(t.n * _F32(t.sum)))
        a[1] = _F32(a[1] + _F32(t.n * _F32(t.zd)))
        if t.cossim is None:
            a[5] = True
        else:
            a[2] = _F32(a[2] + _F32(t.n * _F32(t.cossim)))
        a[3] += t.n
        a[4] += 1
    out = []
    for layer in sorted(acc):
        wsum, wzd, wcos, elements, n_tensors, undefined = acc[layer]
        if elements == 0:
            continue
        ls = LayerStats(
            layer=layer,
            sum=float(_F32(wsum / _F32(elements))),
            zd=float(_F32(wzd / _F32(elements))),
            cossim=None if undefined else float(_F32(wcos / _F32(elements))),
            n_tensors=n_tensors,
            elements=elements,
        )
        pair = act_pairs.get(layer)
        if pair is not None:
            dot, n1, n2, l2sq = pair
            ls.act_l2 = math.sqrt(l2sq)
            if n1 > 0 and n2 > 0:
                ls.act_cossim = max(-1.0, min(1.0, dot / math.sqrt(n1 * n2)))
            elif n1 == 0 and n2 == 0:
                ls.act_cossim = 1.0
            if ls.act_cossim is not None:
                ls.act_ecs = ECS_K * math.exp(-ECS_ALPHA * ls.act_l2) * abs(ls.act_cossim) ** ECS_GAMMA
        out.append(ls)
    return out
