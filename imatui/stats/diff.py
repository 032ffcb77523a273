"""Compare two imatrix files tensor by tensor: pure numpy, plain data out.

For each tensor the compared quantity is the per-channel mean importance, sums2 / counts, flattened
over the matrices (experts) of a MoE tensor. An expert with a zero count in either file carries no
information about that expert, so it is left out of *both* vectors (the cosine and the divergence are
computed over the experts live in A and in B); Σ and the ranks are each file's own llama-imatrix Σ
(the sum of the means over that file's live matrices), so they agree with `imatui stats`.

- cossim: cosine of the two mean-importance vectors (scale-free: 1 means the same shape of
  importance over the channels, whatever the overall level).
- js: Jensen–Shannon divergence of the two vectors normalized to sum 1, in bits (0 same, 1 disjoint).
- rank: position of the tensor by Σ among all tensors of its file (1 = largest); shift = B - A.
- top channel: the channel whose share of the tensor's Σ moved most between A and B.

Tensors are read one at a time from both files (lazy entries), so two 1 GB files are never in RAM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from imatui.errors import CorruptError
from imatui.imatrix import Entry, Imatrix, split_name


@dataclass
class TensorDiff:
    name: str
    layer: int | None
    kind: str
    shape_a: tuple[int, int] | None  # (n_mat, n_in); None when the tensor is not in A
    shape_b: tuple[int, int] | None
    sum_a: float | None  # llama-imatrix's Σ(Act²) in A (None: missing or no live matrix)
    sum_b: float | None
    sum_ratio: float | None  # sum_b / sum_a
    cossim: float | None  # cosine of the mean-importance vectors (1: same shape of importance)
    js: float | None  # Jensen–Shannon divergence of the normalized vectors, bits (0 same, 1 disjoint)
    rank_a: int | None  # 1 = largest Σ among A's tensors
    rank_b: int | None
    rank_shift: int | None  # rank_b - rank_a (negative: more important in B)
    top_channel: int | None  # flat index (expert * n_in + channel) whose share of Σ moved most
    top_value_a: float | None  # that channel's mean importance in A
    top_value_b: float | None
    top_share_delta: float | None  # its share of the tensor's Σ in B minus in A
    comparable: bool
    reason: str | None  # why not comparable (missing, shape mismatch, zero counts)
    experts_compared: int | None = None  # matrices live in both (== n_mat for dense tensors)
    experts_skipped: int | None = None  # matrices left out because their count is 0 in A or B

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape_a"] = None if self.shape_a is None else list(self.shape_a)
        d["shape_b"] = None if self.shape_b is None else list(self.shape_b)
        return d


@dataclass
class LayerDiff:
    layer: int
    cossim: float | None  # element-weighted mean cosine of the layer's comparable tensors
    js: float | None  # element-weighted mean divergence
    n_tensors: int  # comparable tensors in this layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HeaderDiff:
    field: str  # "chunk_size", "chunk_count", "datasets", "format", "tensors"
    a: Any
    b: Any

    @property
    def differs(self) -> bool:
        return self.a != self.b

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "a": self.a, "b": self.b, "differs": self.differs}


@dataclass
class DiffReport:
    a: str  # path (or "A" for an in-memory Imatrix)
    b: str
    header: list[HeaderDiff]
    tensors: list[TensorDiff]  # sorted by name
    only_a: list[str]  # tensor names present only in A
    only_b: list[str]
    layers: list[LayerDiff]  # per-layer similarity over all kinds
    by_kind: dict[str, list[float | None]] = field(default_factory=dict)  # kind -> cosine per layer 0..n-1

    def tensor(self, name: str) -> TensorDiff | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    @property
    def comparable(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.comparable]

    @property
    def header_differences(self) -> list[HeaderDiff]:
        return [h for h in self.header if h.differs]

    def most_different(self) -> list[TensorDiff]:
        """Comparable tensors, most different first: lowest cosine, then largest divergence, then name."""
        return sorted(self.comparable, key=lambda t: (t.cossim, -(t.js or 0.0), t.name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "header": {h.field: {"a": h.a, "b": h.b, "differs": h.differs} for h in self.header},
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "tensors": [t.to_dict() for t in self.tensors],
            "layers": [lay.to_dict() for lay in self.layers],
            "by_kind": {k: list(v) for k, v in self.by_kind.items()},
        }


@dataclass
class ChannelPair:
    """Per-channel mean importance of one tensor in A and in B, over the matrices live in both."""

    name: str
    a: np.ndarray | None  # float64, flat (experts * n_in); None when missing or not comparable
    b: np.ndarray | None
    n_in: int
    experts: list[int]  # the matrix (expert) index of each block of n_in values


def _llama_sum(entry: Entry, sums2: np.ndarray, path: str | None = None) -> float | None:
    """Σ(Act²) as llama-imatrix computes it: sum of sums2/counts over the live matrices (float32).

    Checks the values as `imatui stats` does (same messages): NaN or Inf anywhere (unused experts
    included), negative values in the live matrices, a Σ that overflows float32; CorruptError names
    the tensor. Without this a tensor present in one file only would report NaN as its Σ, and a NaN
    breaks the rank sort of every tensor."""
    name = entry.name
    # a float64 sum of float32 values cannot overflow: it is non-finite only for NaN or Inf
    # (Inf + -Inf is NaN: said below as one line, not as numpy's RuntimeWarning on stderr)
    with np.errstate(invalid="ignore"):
        total = float(np.sum(sums2, dtype=np.float64))
    if not math.isfinite(total):
        bad = int(np.count_nonzero(~np.isfinite(sums2)))
        raise CorruptError(f"tensor {name} has {bad} non-finite values (NaN or Inf)", path)
    counts = np.asarray(entry.counts, dtype=np.float64)
    live = counts > 0
    if not live.any():
        return None
    rows = sums2 if live.all() else sums2[live]  # no gather copy when every matrix is live
    vals = np.asarray(rows, dtype=np.float32) / counts[live].astype(np.float32)[:, None]
    vmin = np.float32(vals.min())
    if vmin < 0:
        raise CorruptError(f"tensor {name} has negative sums of squares (min {float(vmin):g})", path)
    total = float(np.cumsum(vals.reshape(-1), dtype=np.float32)[-1])
    if not math.isfinite(total):
        raise CorruptError(f"tensor {name} has values too large for float32 statistics "
                           f"(max {float(vals.max()):g}: their sums overflow to Inf)", path)
    return total


_TINY = np.finfo(np.float64).tiny


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Inner product in numpy's own SIMD loop. Not np.dot: OpenBLAS threads its ddot, and on a busy
    machine its spinning threads made the whole diff 10x slower (8 s of CPU instead of 0.9)."""
    return float(np.einsum("i,i->", x, y))


def _xlogx(p: np.ndarray) -> float:
    """Σ p ln p with 0 ln 0 = 0 (0 · ln tiny is 0); unmasked, so numpy's vector log runs."""
    logs = np.maximum(p, _TINY)
    np.log(logs, out=logs)
    return _dot(p, logs)


# rows of a (n_mat, n_in) tensor handled per step: about 64 K float64 values, so that the dozen
# passes per step run in the CPU cache rather than through memory (a MoE tensor is ~2 M values)
CHUNK_VALUES = 1 << 16


@dataclass
class _Compared:
    cossim: float | None
    js: float
    top: int  # index into the flat vector of live-in-both matrices
    top_a: float  # mean importance there, in A and in B
    top_b: float
    top_share_delta: float


def _compare(sa: np.ndarray, ca: np.ndarray, sb: np.ndarray, cb: np.ndarray, rows: np.ndarray,
             ta: float, tb: float) -> _Compared:
    """Cosine, Jensen–Shannon (bits) and the channel whose share moved most, of p = a / Σa and
    q = b / Σb where a, b are the mean importances sums2 / counts of the given matrices.

    One pass in row chunks, accumulating in float64. The divergence is H(m) - (H(p) + H(q)) / 2
    with m = (p + q) / 2: for p == q, m is p exactly (doubling and halving are exact), so identical
    inputs give exactly 0.
    """
    n_in = sa.shape[1]
    step = max(1, CHUNK_VALUES // n_in)
    pq = pp = qq = hp = hq = hm = 0.0
    best, best_i, best_p, best_q = -1.0, 0, 0.0, 0.0
    dense = len(rows) == sa.shape[0]  # every matrix live: contiguous slices, no gather copies
    for start in range(0, len(rows), step):
        r = slice(start, start + step) if dense else rows[start:start + step]
        p = np.divide(sa[r], (ca[r] * ta)[:, None], dtype=np.float64).reshape(-1)
        q = np.divide(sb[r], (cb[r] * tb)[:, None], dtype=np.float64).reshape(-1)
        pq += _dot(p, q)
        pp += _dot(p, p)
        qq += _dot(q, q)
        hp += _xlogx(p)
        hq += _xlogx(q)
        m = p + q
        m *= 0.5
        hm += _xlogx(m)
        d = np.subtract(q, p, out=m)
        i = int(np.argmax(np.abs(d)))
        if abs(float(d[i])) > best:
            best, best_i, best_p, best_q = abs(float(d[i])), start * n_in + i, float(p[i]), float(q[i])
    cossim = None if pp == 0.0 or qq == 0.0 else max(-1.0, min(1.0, pq / math.sqrt(pp * qq)))
    js = (0.5 * (hp + hq) - hm) / math.log(2.0)  # H(m) - (H(p)+H(q))/2 with H = -Σ x ln x, in bits
    return _Compared(cossim=cossim, js=min(1.0, max(0.0, js)), top=best_i, top_a=best_p * ta,
                     top_b=best_q * tb, top_share_delta=best_q - best_p)


def _live_total(name: str, sums2: np.ndarray, counts: np.ndarray, rows: np.ndarray, path: str | None) -> float:
    """Σ of the mean importances over the given matrices (float64), checking the values on the way."""
    sub = sums2 if len(rows) == sums2.shape[0] else sums2[rows]
    row_sums = sub.sum(axis=1, dtype=np.float64)
    total = float((row_sums / counts[rows]).sum())
    if not math.isfinite(total):  # a sum of finite non-negative float32 values cannot overflow float64
        raise CorruptError(f"tensor {name} has non-finite values (NaN or Inf)", path)
    if sub.size and float(sub.min()) < 0:
        raise CorruptError(f"tensor {name} has negative sums of squares", path)
    return total


def _row(name: str, ea: Entry | None, eb: Entry | None, pa: str | None, pb: str | None) -> TensorDiff:
    layer, kind = split_name(name)
    row = TensorDiff(name=name, layer=layer, kind=kind,
                     shape_a=None if ea is None else tuple(ea.shape),
                     shape_b=None if eb is None else tuple(eb.shape),
                     sum_a=None, sum_b=None, sum_ratio=None, cossim=None, js=None,
                     rank_a=None, rank_b=None, rank_shift=None, top_channel=None, top_value_a=None,
                     top_value_b=None, top_share_delta=None, comparable=False, reason=None)
    sa = None if ea is None else np.asarray(ea.sums2)
    sb = None if eb is None else np.asarray(eb.sums2)
    if ea is not None:
        row.sum_a = _llama_sum(ea, sa, pa)
    if eb is not None:
        row.sum_b = _llama_sum(eb, sb, pb)
    if row.sum_a is not None and row.sum_b is not None and row.sum_a != 0:
        row.sum_ratio = row.sum_b / row.sum_a
    if ea is None:
        row.reason = "missing in A"
        return row
    if eb is None:
        row.reason = "missing in B"
        return row
    if ea.shape != eb.shape:
        row.reason = f"shape mismatch: {ea.n_mat}x{ea.n_in} in A, {eb.n_mat}x{eb.n_in} in B"
        return row
    ca = np.asarray(ea.counts, dtype=np.float64)
    cb = np.asarray(eb.counts, dtype=np.float64)
    if not (ca > 0).any():
        row.reason = "zero counts in A (no tokens reached it)"
        return row
    if not (cb > 0).any():
        row.reason = "zero counts in B (no tokens reached it)"
        return row
    live = (ca > 0) & (cb > 0)
    if not live.any():
        row.reason = "no matrix (expert) has tokens in both A and B"
        return row
    rows = np.flatnonzero(live)
    ta = _live_total(name, sa, ca, rows, pa)
    tb = _live_total(name, sb, cb, rows, pb)
    row.experts_compared = int(len(rows))
    row.experts_skipped = int(ea.n_mat - len(rows))
    if ta == 0.0 or tb == 0.0:
        row.reason = f"all channels are zero in {'A' if ta == 0.0 else 'B'}"
        return row
    c = _compare(sa, ca, sb, cb, rows, ta, tb)
    row.cossim, row.js = c.cossim, c.js
    row.top_channel = int(rows[c.top // ea.n_in]) * ea.n_in + c.top % ea.n_in
    row.top_value_a, row.top_value_b, row.top_share_delta = c.top_a, c.top_b, c.top_share_delta
    row.comparable = True
    return row


def channel_pair(a: Imatrix, b: Imatrix, name: str) -> ChannelPair:
    """The two per-channel vectors compared for one tensor (for plots): experts live in both files."""
    ea, eb = a.entries.get(name), b.entries.get(name)
    n_in = (ea or eb).n_in if (ea or eb) is not None else 0
    has_a = ea is not None and bool((np.asarray(ea.counts) > 0).any())
    has_b = eb is not None and bool((np.asarray(eb.counts) > 0).any())
    if not (has_a and has_b) or ea.shape != eb.shape:
        # each side on its own channels; None for a side with no data (missing, or every count 0)
        va = ea.mean_importance() if has_a else None
        vb = eb.mean_importance() if has_b else None
        return ChannelPair(name, va, vb, n_in, [])
    live = (np.asarray(ea.counts) > 0) & (np.asarray(eb.counts) > 0)
    if not live.any():
        return ChannelPair(name, None, None, n_in, [])
    return ChannelPair(name, ea.mean_importance(live), eb.mean_importance(live), n_in,
                       [int(i) for i in np.flatnonzero(live)])


def _ranks(sums: dict[str, float | None]) -> dict[str, int]:
    """1 = largest Σ among the tensors that have one; ties in name order."""
    order = sorted((-s, n) for n, s in sums.items() if s is not None)
    return {n: i + 1 for i, (_, n) in enumerate(order)}


def _header(a: Imatrix, b: Imatrix) -> list[HeaderDiff]:
    return [
        HeaderDiff("chunk_size", int(a.chunk_size), int(b.chunk_size)),
        HeaderDiff("chunk_count", int(a.chunk_count), int(b.chunk_count)),
        HeaderDiff("datasets", list(a.datasets), list(b.datasets)),
        HeaderDiff("format", a.format, b.format),
        HeaderDiff("tensors", len(a), len(b)),
    ]


def compute_diff(a: Imatrix, b: Imatrix, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> DiffReport:
    """Every tensor of A and B compared; one tensor of each file in memory at a time.

    progress(done, total) is called after each tensor; cancelled() is polled between tensors and
    raises InterruptedError when it returns True (the TUI's worker cancels this way).
    """
    pa = None if a.path is None else str(a.path)
    pb = None if b.path is None else str(b.path)
    names = sorted(set(a.entries) | set(b.entries))
    rows: list[TensorDiff] = []
    for i, name in enumerate(names):
        if cancelled is not None and cancelled():
            raise InterruptedError("diff cancelled")
        rows.append(_row(name, a.entries.get(name), b.entries.get(name), pa, pb))
        if progress is not None:
            progress(i + 1, len(names))

    rank_a = _ranks({r.name: r.sum_a for r in rows})
    rank_b = _ranks({r.name: r.sum_b for r in rows})
    for r in rows:
        r.rank_a = rank_a.get(r.name)
        r.rank_b = rank_b.get(r.name)
        if r.rank_a is not None and r.rank_b is not None:
            r.rank_shift = r.rank_b - r.rank_a

    layers, by_kind = _layer_similarity(rows, a, b)
    return DiffReport(
        a=pa or "A", b=pb or "B", header=_header(a, b), tensors=rows,
        only_a=[n for n in names if n not in b.entries],
        only_b=[n for n in names if n not in a.entries],
        layers=layers, by_kind=by_kind,
    )


def _layer_similarity(rows: list[TensorDiff], a: Imatrix, b: Imatrix
                      ) -> tuple[list[LayerDiff], dict[str, list[float | None]]]:
    blocks = [r.layer for r in rows if r.layer is not None]
    n_layers = max(blocks) + 1 if blocks else 0
    kinds = sorted({r.kind for r in rows if r.layer is not None})
    by_kind: dict[str, list[float | None]] = {k: [None] * n_layers for k in kinds}
    acc: dict[int, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r.layer is None:
            continue
        by_kind[r.kind][r.layer] = r.cossim if r.comparable else None
        if r.comparable and r.cossim is not None:
            size = a.entries[r.name].size
            acc.setdefault(r.layer, []).append((size, r.cossim, r.js or 0.0))
    layers = []
    for layer in range(n_layers):
        items = acc.get(layer, [])
        if not items:
            layers.append(LayerDiff(layer, None, None, 0))
            continue
        w = sum(s for s, _, _ in items)
        layers.append(LayerDiff(layer, sum(s * c for s, c, _ in items) / w,
                                sum(s * j for s, _, j in items) / w, len(items)))
    return layers, by_kind
