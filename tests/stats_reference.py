"""The plain per-tensor transcription of llama-imatrix's statistics: the reference of the tests.

One tensor at a time, numpy cumsum for llama's float32 sums (std::accumulate with 0.0f), as
llama.cpp's loops read. Production computes the same numbers batched (imatui.stats.batched);
tests/test_stats_batched.py checks that both agree to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imatui.errors import CorruptError
from imatui.imatrix import split_name
from imatui.stats import checks
from imatui.stats.batched import ACTIVE_THRESHOLD, TOP_CHANNELS, cos_f32, shape_moments
from imatui.stats.tensor import TensorStats, _activation_stats

_F32 = np.float32


def _seqsum(x: np.ndarray) -> np.float32:
    """float32 sum in element order, as std::accumulate(begin, end, 0.0f)."""
    if x.size == 0:
        return _F32(0.0)
    return np.cumsum(x, dtype=np.float32)[-1]


@dataclass
class _Prev:
    raw: np.ndarray  # raw sums2, flat float32
    act: np.ndarray | None  # mean activations (zero rows kept), float64


def _tensor_stats(name: str, sums2: np.ndarray, counts: np.ndarray, sums: np.ndarray | None,
                  prev: _Prev | None, path: str | None) -> tuple[TensorStats | None, str | None, _Prev]:
    n_mat, n_in = sums2.shape
    raw = np.ascontiguousarray(sums2, dtype=_F32).reshape(-1)
    layer, kind = split_name(name)
    # a float64 sum of float32 values cannot overflow: it is non-finite only if some value is NaN or
    # Inf (also in the rows of unused experts, which the statistics skip but a quantizer would read)
    if not math.isfinite(float(raw.sum(dtype=np.float64))):
        bad = int(np.count_nonzero(~np.isfinite(raw)))
        raise CorruptError(checks.nonfinite_message(name, bad), path)
    live = counts > 0
    n_live = int(live.sum())

    act_full = None
    if sums is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            act_full = np.where(live[:, None], sums.astype(np.float64) / np.where(live, counts, 1)[:, None], 0.0)
        act_full = act_full.reshape(-1)
    state = _Prev(raw=raw, act=act_full)

    if n_live == 0:
        return None, "every matrix has a zero count (no tokens reached it)", state

    if n_live == n_mat:
        rows = sums2
        cnt = counts.astype(_F32)
    else:
        rows = sums2[live]
        cnt = counts[live].astype(_F32)
    vals = (np.asarray(rows, dtype=_F32) / cnt[:, None]).astype(_F32, copy=False).reshape(-1)
    vmin = _F32(vals.min())
    if vmin < 0:
        raise CorruptError(checks.negative_message(name, vmin), path)
    n = vals.size
    nf = _F32(n)
    total = _seqsum(vals)
    vmax = _F32(vals.max())
    mean = _F32(total / nf)
    sq = vals * vals
    sqr_total = _seqsum(sq)
    if not (np.isfinite(total) and np.isfinite(sqr_total)):
        # finite values whose float32 sums overflow: llama.cpp would print inf; no real imatrix has them
        raise CorruptError(checks.overflow_message(name, vmax), path)
    var = _F32(_F32(sqr_total / nf) - _F32(mean * mean))
    dev = _F32(np.sqrt(max(_F32(0.0), var)))
    inactive = int(np.count_nonzero(np.abs(vals) <= ACTIVE_THRESHOLD))
    active = float(_F32(1) - _F32(inactive) / nf)
    entropy = _F32(0.0)
    if total > 0:
        p = (vals / total).astype(_F32, copy=False)
        p = p[p > 0]
        entropy = _F32(-_seqsum((p * np.log2(p)).astype(_F32, copy=False)))
    z_count = 0
    if dev > 0:
        z = (vals - mean) / dev
        z_count = int(np.count_nonzero(z > _F32(1)))
    zd = float(_F32(_F32(z_count) / nf))
    # llama.cpp divides in float32 (its printed E(norm) depends on it)
    entropy_norm = float(_F32(entropy / _F32(math.log2(n)))) if n > 1 else 0.0

    cossim: float | None
    if layer is None:
        cossim = 0.0
    elif prev is None:
        cossim = 0.0  # llama.cpp leaves 0 when blk N-1 has no such tensor (always so for blk 0)
    elif prev.raw.size != raw.size:
        cossim = None  # llama.cpp reads past the shorter vector here; we print nothing
    else:
        cossim = cos_f32(raw, prev.raw)

    skew, kurt = shape_moments(vals)
    k = min(TOP_CHANNELS, n)
    top_local = np.argpartition(vals, n - k)[n - k :]
    top_local = top_local[np.argsort(vals[top_local])[::-1]]
    if n_live == n_mat:
        top_flat = top_local
    else:
        live_rows = np.flatnonzero(live)
        top_flat = live_rows[top_local // n_in] * n_in + top_local % n_in
    dead = int(np.count_nonzero(vals == 0))

    ts = TensorStats(
        name=name, layer=layer, kind=kind, n_mat=n_mat, n_in=n_in,
        sum=float(total), min=float(vmin), max=float(vmax), mean=float(mean), std=float(dev),
        active=active, n=n, entropy=float(entropy), entropy_norm=entropy_norm, zd=zd, cossim=cossim,
        skewness=skew, kurtosis=kurt, dead=dead, tokens=int(counts.max()),
        skipped_matrices=n_mat - n_live,
        top_channels=[int(i) for i in top_flat], top_values=[float(vals[i]) for i in top_local],
    )
    if n_mat > 1:
        ts.expert_counts = [int(c) for c in counts]
        ts.experts_unused = int(n_mat - n_live)

    if act_full is not None:
        _activation_stats(ts, act_full, live, None if prev is None else prev.act, path)
    return ts, None, state


