"""The diff as it was computed before the engine did it: one tensor of each file at a time, in float64.

The reference of tests/test_diff.py's randomized comparison (production uses imatui.stats.diff's
batched job); the per-tensor code before issue 15, unchanged but for its imports and this name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imatui.errors import CorruptError
from imatui.imatrix import Entry
from imatui.stats.diff import TensorDiff


def _llama_sum(entry: Entry, sums2: np.ndarray, path: str | None = None) -> float | None:
    """Σ(Act²) as llama-imatrix computes it: sum of sums2/counts over the live matrices (float32).

    Checks the values as `imatui stats` does (same messages): NaN or Inf anywhere (unused experts
    included), negative values in the live matrices, a Σ that overflows float32; CorruptError names
    the tensor. Without this a tensor present in one file only would report NaN as its Σ, and a NaN
    breaks the rank sort of every tensor."""
    name = entry.name
    # a float64 sum of float32 values cannot overflow: it is non-finite only for NaN or Inf
    if not math.isfinite(float(np.sum(sums2, dtype=np.float64))):
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


def reference_row(name: str, ea: Entry | None, eb: Entry | None, pa: str | None = None,
                  pb: str | None = None) -> TensorDiff:
    """One tensor compared as the per-tensor code did (ranks left out: they are set over all rows)."""
    row = TensorDiff.blank(name, ea, eb)
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




def js_exact(ea: Entry, eb: Entry) -> float:
    """The Jensen–Shannon divergence (bits) of one tensor in A and B, in long double (x86: 64-bit
    mantissa) and written without cancellation: each channel adds (p + q) g(d) / 2 with
    d = (q - p) / (p + q) and g(d) = ½ [(1 + d) log1p(d) + (1 - d) log1p(-d)], where log1p keeps its
    digits for small d. Independent of the engine's series; for nearly equal files, where
    _compare's difference of entropies keeps none."""
    ld = np.longdouble
    live = (np.asarray(ea.counts) > 0) & (np.asarray(eb.counts) > 0)
    va = np.asarray(ea.sums2, ld).reshape(ea.shape)[live] / np.asarray(ea.counts, ld)[live, None]
    vb = np.asarray(eb.sums2, ld).reshape(eb.shape)[live] / np.asarray(eb.counts, ld)[live, None]
    p, q = (va / va.sum()).reshape(-1), (vb / vb.sum()).reshape(-1)
    s = p + q
    s, d = s[s > 0], (q - p)[s > 0] / s[s > 0]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 · log1p(-1) is 0
        g = (np.where(d > -1, (1 + d) * np.log1p(d), 0) + np.where(d < 1, (1 - d) * np.log1p(-d), 0)) / 2
    return float((s * g).sum() / 2 / np.log(ld(2)))
