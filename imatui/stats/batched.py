"""llama.cpp's per-tensor statistics for a batch of tensors at once, digit for digit and fast.

llama-imatrix --show-statistics computes, over the means v = sums2 / count of the matrices it reads
(count > 0), in float32 and element by element: Σ, min, max, μ = Σ / n, σ from Σv², % active
(v > 1e-5), the entropy of p = v / Σ, ZD (the fraction with (v - μ) / σ > 1) and the CosSim of the
raw sums2 with block N-1's. The batch layout, the reading and the float32 chains are the engine's
(imatui.stats.engine); here is what is computed on them, one pass at a time:

- pass 1 (`pass1`): Σv, Σv², each row's min and max, % active, dead channels, the CosSim inner
  products;
- the checks (`centre`): NaN, negative values, overflow (imatui.stats.checks), then μ and σ;
- pass 2 (`pass2`, which needs Σ, μ and σ): the entropy, ZD, the top channels and the moments for
  skewness and kurtosis;
- the finish (`finish`): each tensor's numbers as llama prints them.

Where the per-element chains allow, one numpy call does two jobs: einsum("ij,ij->j") rounds each
product and adds in row order, booleans are counted eight to a 64-bit word, BLAS dot products give
the moments, and thresholds found once per row or tensor turn divisions into comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from imatui.stats import checks, engine
from imatui.stats.engine import (
    F32,
    BlockReader,
    Column,
    Layout,
    chain,
    chain_products,
    flat2,
    padded,
    row_counts,
    rowdot,
    scratch_array,
)

ACTIVE_THRESHOLD = F32(1e-5)
TOP_CHANNELS = 8
_TINY = np.finfo(F32).smallest_subnormal


@dataclass
class TensorResult:
    """The numbers of one tensor, as plain Python values (filled by the batch)."""

    name: str
    n: int = 0
    total: float = 0.0
    vmin: float = 0.0
    vmax: float = 0.0
    mean: float = 0.0
    dev: float = 0.0
    active: float = 0.0
    entropy: float = 0.0
    entropy_norm: float = 0.0
    zd: float = 0.0
    cossim: float | None = 0.0
    skewness: float | None = None
    kurtosis: float | None = None
    dead: int = 0
    top_channels: list[int] = field(default_factory=list)
    top_values: list[float] = field(default_factory=list)
    skipped: bool = False
    error: str | None = None


def run_batch(cols: list[Column], path: str | None, cancelled: Callable[[], bool] | None,
              scratch: dict | None = None, sub_elements: int | None = None) -> list[TensorResult]:
    """Statistics of the batch's non-helper columns (all of one shape), in column order.

    `scratch`: block buffers kept from an earlier batch of the same thread (filled in here).
    `sub_elements`: elements computed on at a time (default engine.SUB_ELEMENTS). Threads sharing the
    GIL want fewer, larger numpy calls (engine.THREAD_SUB_ELEMENTS).
    """
    if scratch is None:
        scratch = {}
    lay = Layout.of([c.entry for c in cols], engine.SUB_ELEMENTS if sub_elements is None else sub_elements)
    results = [TensorResult(c.name) for c in cols]
    with np.errstate(all="ignore"), BlockReader(lay, [c.entry for c in cols], cancelled, scratch) as reader:
        p1 = pass1(lay, reader, scratch)
        c = centre(cols, lay, p1, reader, results)
        if any(r.error for r in results):
            return [r for r, col in zip(results, cols) if not col.helper]
        p2 = pass2(lay, reader, p1, c, scratch)
        shape = moments(lay, reader, p1, c, p2)
        # llama compares the flat vectors of blk N and N-1 whenever the sizes agree: another shape
        # of the same size is compared apart, from the two whole tensors
        partner_cos = {k: cos_f32(reader.whole(k), reader.read_entry(col.cos_partner))
                       for k, col in enumerate(cols) if col.cos_partner is not None and not col.helper}
    return finish(cols, lay, results, p1, c, p2, shape, partner_cos)


# --- pass 1 ---------------------------------------------------------------------------------------

@dataclass
class Pass1:
    total: np.ndarray  # (K,) float32 Σv, llama's chain
    sqr: np.ndarray  # (K,) float32 Σv²
    mag: np.ndarray  # (K,) float32 Σraw², CosSim's magnitude
    dp: np.ndarray  # (K,) float32: column j's raw values with column j + 1's, CosSim's inner product
    inactive: np.ndarray  # (K,) values <= 1e-5 (% active)
    zeros: np.ndarray  # (K,) values exactly 0 (dead channels)
    row_max: np.ndarray  # (K, rows) each row's largest v, -inf for the rows llama skips
    vmin: np.ndarray  # (K,) the smallest and largest v over the live rows
    vmax: np.ndarray


def pass1(lay: Layout, reader: BlockReader, scratch: dict) -> Pass1:
    """Σv, Σv², each row's min and max, % active, zeros and the CosSim inner products, on every sub-block."""
    K, w = lay.K, lay.w
    s_max = lay.sub_elements
    tbuf = scratch_array(scratch, "t", (s_max + 1, K), F32)  # + 1: pass 2's row of chain seeds
    vbuf = scratch_array(scratch, "v", (s_max, K), F32)
    gbuf = scratch_array(scratch, "g", (K, lay.block_elements), np.bool_).reshape(-1)  # a read block
    means = MeansT(lay)
    athr = _raw_thresholds(lay.cnt, ACTIVE_THRESHOLD)  # (K, rows): v <= 1e-5 is raw <= athr
    total = np.zeros(K, F32)
    sqr = np.zeros(K, F32)
    mag = np.zeros(K, F32)
    dp = np.zeros(K, F32)
    inactive = np.zeros(K, np.int64)
    zeros = np.zeros(K, np.int64)
    rawmax = np.empty((K, lay.rows), F32)  # each row's largest and smallest raw value
    rawmin = np.empty((K, lay.rows), F32)
    for r0, r1, raw in reader.blocks():
        for s0, s1, part in reader.subs(r0, r1, raw):
            m = s1 - s0
            p3 = part.reshape(K, m, w)
            p3.max(axis=2, out=rawmax[:, s0:s1])  # v = fl(raw / c) is monotone in raw
            p3.min(axis=2, out=rawmin[:, s0:s1])
            # the float32 chains, on (element, tensor) matrices
            rt, vt = means(part, s0, s1, tbuf, vbuf)
            total = sum_v(vt, total)
            np.multiply(vt, vt, out=vt)  # in place: half the memory traffic of a second matrix
            sqr = chain(vt, sqr)  # Σv²
            if K > 1:
                # column j times column j + 1 as one contiguous multiply of the flat matrix shifted
                # by one element (the last column pairs across rows: unused)
                pr = vt  # free again: the sums of v and v^2 are done
                flat, pflat = rt.reshape(-1), pr.reshape(-1)
                np.multiply(flat[:-1], flat[1:], out=pflat[:-1])
                pflat[-1] = 0
                dp = chain(pr, dp)  # CosSim's Σ raw_N * raw_N-1
            np.multiply(rt, rt, out=rt)
            mag = chain(rt, mag)  # CosSim's Σ raw²
        # % active and dead channels, read block by read block: only rows with a v <= 1e-5 count
        m = r1 - r0
        dead_rows = ~lay.live[:, r0:r1]
        c = lay.cnt[:, r0:r1]
        r3 = raw.reshape(K, m, w)
        rmin = np.where(dead_rows, np.inf, rawmin[:, r0:r1] / c)
        cand = rmin <= ACTIVE_THRESHOLD
        n_cand = int(np.count_nonzero(cand))
        if 4 * n_cand > cand.size:  # most rows: the whole block, no row copies
            le = np.less_equal(r3, athr[:, r0:r1, None], out=flat2(gbuf, K, m * w).reshape(K, m, w))
            inactive += row_counts(le.reshape(K, m * w))
        elif n_cand:
            ks, rs = np.divmod(np.flatnonzero(cand), m)
            le = r3[ks, rs] <= athr[ks, r0 + rs][:, None]
            np.add.at(inactive, ks, np.add.reduce(le.view(np.uint8), axis=1, dtype=np.int32))
        if n_cand:  # dead channels: v == 0
            ks, rs = np.divmod(np.flatnonzero(rmin == 0), m)
            if ks.size:
                vk = r3[ks, rs] / c[ks, rs][:, None]
                np.add.at(zeros, ks, np.add.reduce((vk == 0).view(np.uint8), axis=1, dtype=np.int32))
    # each row's largest and smallest v; the rows llama skips take no part
    row_max = np.where(lay.live, rawmax / lay.cnt, -np.inf)
    vmin = np.where(lay.live, rawmin / lay.cnt, np.inf).min(axis=1)
    return Pass1(total, sqr, mag, dp, inactive, zeros, row_max, vmin, row_max.max(axis=1))


class MeansT:
    """v = fl(raw / count) of a sub-block as an (element, tensor) matrix: what llama's chains run on."""

    def __init__(self, lay: Layout):
        self.lay = lay
        # each row's count repeated `tile` times along a wide row: a long inner loop for numpy
        self.tile = next(t for t in (16, 8, 4, 2, 1) if lay.w % t == 0)
        self.ctile = np.tile(lay.cnt.T[:, None, :], (1, 1, self.tile))  # (rows, 1, tile * K)

    def __call__(self, part: np.ndarray, s0: int, s1: int, tbuf: np.ndarray,
                 vbuf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rt, vt): the sub-block's raw values transposed (in tbuf), and v (in vbuf), both (L, K)."""
        K, w, tile, m = self.lay.K, self.lay.w, self.tile, s1 - s0
        rt = tbuf[: m * w]
        np.copyto(rt, part.T)
        vt = vbuf[: m * w]
        np.divide(rt.reshape(m, w // tile, tile * K), self.ctile[s0:s1], out=vt.reshape(m, w // tile, tile * K))
        return rt, vt


def sum_v(vt: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Σv, llama's Σ(Act²): each tensor's float32 chain continued over a sub-block's v (left as it was)."""
    row0 = vt[0].copy()  # chain() adds the running sum into the first row
    total = chain(vt, total)
    vt[0] = row0
    return total


def _raw_thresholds(cnt: np.ndarray, limit: np.float32) -> np.ndarray:
    """Per (tensor, row): the largest float32 r with fl(r / count) <= limit (fl(r / c) is monotone in r),
    -inf for the rows llama skips (count inf). % active counts raw > r, without a division."""
    with np.errstate(all="ignore"):
        r = (cnt * limit).astype(F32)
        for _ in range(64):
            over = (r / cnt) > limit
            if not over.any():
                break
            r = np.where(over, np.nextafter(r, F32(-np.inf), dtype=F32), r)
        for _ in range(64):
            up = np.nextafter(r, F32(np.inf), dtype=F32)
            ok = (up / cnt) <= limit
            if not ok.any():
                break
            r = np.where(ok, up, r)
    r[~np.isfinite(cnt)] = -np.inf
    return r


# --- the checks, μ and σ -------------------------------------------------------------------------

@dataclass
class Centre:
    mean: np.ndarray  # (K,) float32 μ = Σ / n
    dev: np.ndarray  # (K,) float32 σ = sqrt(Σv² / n - μ²)
    ok: np.ndarray  # (K,) the tensors with numbers (not helpers, not skipped, no error)


def centre(cols: list[Column], lay: Layout, p1: Pass1, reader: BlockReader,
           results: list[TensorResult]) -> Centre:
    """Check each tensor's values (marking results skipped or in error), then llama's μ and σ."""
    K = lay.K
    mean = np.zeros(K, F32)
    dev = np.zeros(K, F32)
    ok = np.zeros(K, bool)
    for k, col in enumerate(cols):
        r = results[k]
        if col.helper:
            continue
        if lay.n_live[k] == 0:
            r.skipped = True
            continue
        # Σraw² is finite unless some value is NaN or Inf (or huge): only then count them, in a read apart
        bad = 0 if np.isfinite(p1.mag[k]) else reader.count_nonfinite(k)
        r.error = checks.value_error(col.name, bad, p1.vmin[k], p1.vmax[k], p1.total[k], p1.sqr[k])
        if r.error:
            continue
        nf = F32(lay.n_live[k])
        mean[k] = F32(p1.total[k] / nf)
        var = F32(F32(p1.sqr[k] / nf) - F32(mean[k] * mean[k]))
        dev[k] = F32(np.sqrt(max(F32(0.0), var)))
        ok[k] = True
    return Centre(mean, dev, ok)


# --- pass 2 ---------------------------------------------------------------------------------------

@dataclass
class Pass2:
    ent: np.ndarray  # (K,) float32 Σ p log2 p (the entropy, negated), llama's chain
    zcount: np.ndarray  # (K,) values with z > 1 (ZD)
    m1: np.ndarray  # (K,) float64 moments of d = v - μ (divided by `scale`): Σd, Σd², Σd³, Σd⁴
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    scale: np.ndarray  # (K,) float32
    top_v: np.ndarray  # (K, TOP_CHANNELS) each tensor's largest values, best first, padded with -inf
    top_i: np.ndarray  # (K, TOP_CHANNELS) their flat indices (ties: the lower index)
    n_top: np.ndarray  # (K,) how many of them are real: min(TOP_CHANNELS, n)


def zd_threshold(mean: np.float32, dev: np.float32) -> np.float32:
    """ZD: llama counts the values with fl(fl(v - μ) / σ) > 1, a one-tailed z-score test.

    That test is monotone in v, so it is v >= v* for one float32 v*: the smallest v that passes,
    found here once per tensor (pass 2 then compares instead of subtracting and dividing)."""
    one = F32(1)

    def hit(v: np.float32) -> bool:
        return bool(F32(F32(v - mean) / dev) > one)

    v = F32(mean + dev)
    if hit(v):
        while hit(down := np.nextafter(v, F32(-np.inf), dtype=F32)):
            v = down
        return v
    while not hit(v):
        v = np.nextafter(v, F32(np.inf), dtype=F32)
    return v


def pass2(lay: Layout, reader: BlockReader, p1: Pass1, c: Centre, scratch: dict) -> Pass2:
    """The entropy (needs Σ), ZD (needs μ, σ), the top channels (need the row maxima) and the moments."""
    K, w = lay.K, lay.w
    s_max = lay.sub_elements
    pbuf = scratch_array(scratch, "p", (K, padded(s_max)), F32)[:, :s_max]
    tbuf = scratch_array(scratch, "t", (s_max + 1, K), F32)
    sbuf = scratch_array(scratch, "s", (s_max + 1, K), F32)
    gbuf = scratch_array(scratch, "g", (K, lay.block_elements), np.bool_).reshape(-1)
    ent = np.zeros(K, F32)
    zcount = np.zeros(K, np.int64)
    m1 = np.zeros(K)  # llama's float32 μ is off by its sum's rounding: the moments are re-centred
    m2 = np.zeros(K)
    m3 = np.zeros(K)
    m4 = np.zeros(K)
    top_v = np.full((K, TOP_CHANNELS), -np.inf, F32)
    top_i = np.full((K, TOP_CHANNELS), np.iinfo(np.int64).max, np.int64)
    n_top = np.minimum(TOP_CHANNELS, lay.n_live).astype(np.int64)
    mean, dev, ok = c.mean, c.dev, c.ok
    # moments of d = v - μ, divided by σ only where a float32 sum of d^4 could overflow
    big = np.maximum(np.abs(p1.vmax.astype(np.float64)), np.abs(p1.vmin.astype(np.float64)))
    safe_dev = np.where(dev > 0, dev, F32(1)).astype(F32)
    scale = np.where(lay.n_live.astype(np.float64) * big**4 < 1e36, F32(1), safe_dev).astype(F32)
    out = Pass2(ent, zcount, m1, m2, m3, m4, scale, top_v, top_i, n_top)
    if not ok.any():
        return out
    ones = np.ones(s_max, F32)
    safe_total = np.where(p1.total > 0, p1.total, F32(1)).astype(F32)
    vstar = np.array([zd_threshold(mean[k], dev[k]) if ok[k] and dev[k] > 0 else np.inf
                      for k in range(K)], dtype=F32)
    need_scale = bool(np.any(scale != 1))
    zero_cols = np.flatnonzero(p1.zeros)  # tensors with some v exactly 0 (dead channels)
    top_rows = _top_rows(lay, p1.row_max, ok, n_top)
    top = _TopMerger(top_v, top_i)
    for r0, r1, raw in reader.blocks():
        dead_block = ~lay.live[:, r0:r1]
        for s0, s1, vals in reader.subs(r0, r1, raw):
            dead_rows = dead_block[:, s0 - r0 : s1 - r0]
            L = (s1 - s0) * w
            r3 = vals.reshape(K, s1 - s0, w)  # v, in place: each pass reads the file again
            np.divide(r3, lay.cnt[:, s0:s1, None], out=r3)
            # ZD: v >= v*, counted eight to a word (the rows llama skips: 0 < v*)
            ge = np.greater_equal(vals, vstar[:, None], out=flat2(gbuf, K, L))
            out.zcount += row_counts(ge)
            ks, rs = np.nonzero(top_rows[:, s0:s1])
            if ks.size:  # a few rows a tensor: each row's own best TOP_CHANNELS
                vk = r3[ks, rs]
                gi, gj = np.nonzero(_row_best(vk))
                top.add(ks[gi], vk[gi, gj], (s0 + rs[gi]) * w + gj)
            # the entropy: fl(v / Σ) as llama, then p * log2(p) on the (element, tensor) matrix, whose
            # row 0 continues the chains: their last value times 1
            pk = pbuf[:, :L]
            np.divide(vals, safe_total[:, None], out=pk)
            # a p of 0 (a row llama skips, a dead channel) is skipped by llama: as 1 here, and
            # 1 * log2(1) = +0.0 leaves a chain as it is (a chain here is never -0.0: its terms are
            # < 0, or +0.0)
            any_dead = bool(dead_rows.any())
            if any_dead:
                pk.reshape(K, s1 - s0, w)[dead_rows] = 1
            if zero_cols.size:  # only the tensors that have zeros
                zp = pk[zero_cols]
                zp[zp == 0] = 1
                pk[zero_cols] = zp
            pt = tbuf[: L + 1]
            np.copyto(pt[1:], pk.T)
            lg = sbuf[: L + 1]
            np.log2(pt[1:], out=lg[1:])
            new = chain_products(lg, pt, out.ent)
            if np.isnan(new).any():  # v / Σ underflowed to 0 somewhere: 0 * log2(0) is NaN, and
                # 0 * log2(tiny) = -0.0 leaves the chain as it is
                np.log2(np.maximum(pt[1:], _TINY, out=lg[1:]), out=lg[1:])
                new = chain_products(lg, pt, out.ent)
            out.ent = new
            # the moments, about μ
            d = np.subtract(vals, mean[:, None], out=vals)
            if any_dead:  # the rows llama skips add nothing (their -μ would drown small moments)
                d.reshape(K, s1 - s0, w)[dead_rows] = 0
            if need_scale:
                np.divide(d, scale[:, None], out=d)
            d2 = np.multiply(d, d, out=pk)
            out.m1 += rowdot(d, ones[:L])
            out.m2 += rowdot(d, d)
            out.m3 += rowdot(d2, d)
            out.m4 += rowdot(d2, d2)
    top.merge()
    return out


# --- top channels -------------------------------------------------------------------------------

def _top_rows(lay: Layout, row_max: np.ndarray, ok: np.ndarray, n_top: np.ndarray) -> np.ndarray:
    """(K, rows): the rows that can hold a tensor's top values, those of its n_top largest row maxima
    (ties included): a row below them has n_top rows whose maxima beat its every value."""
    rows = lay.rows
    top_rows = np.zeros((lay.K, rows), bool)
    for k in np.flatnonzero(ok & (n_top > 0)):  # (helper columns are not ok)
        kth = np.partition(row_max[k], rows - n_top[k])[rows - n_top[k]] if rows > n_top[k] else -np.inf
        top_rows[k] = (row_max[k] >= kth) & lay.live[k]
    return top_rows


def _row_best(v: np.ndarray) -> np.ndarray:
    """Each row's TOP_CHANNELS largest values (ties: the lower index) as a mask; a shorter row: all of it."""
    n = v.shape[1]
    if n <= TOP_CHANNELS:
        return np.ones(v.shape, bool)
    kth = np.partition(v, n - TOP_CHANNELS, axis=1)[:, n - TOP_CHANNELS, None]
    take = v > kth
    tie = v == kth
    need = TOP_CHANNELS - take.sum(axis=1, keepdims=True)  # places left for values equal to kth
    return take | (tie & (np.cumsum(tie, axis=1) <= need))


class _TopMerger:
    """Candidates (tensor, value, flat index) gathered, merged into the top lists now and then."""

    LIMIT = 1 << 16  # ties can make many rows candidates: merge as they come

    def __init__(self, top_v: np.ndarray, top_i: np.ndarray):
        self.top_v, self.top_i = top_v, top_i
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n = 0

    def add(self, grp: np.ndarray, vals: np.ndarray, flat: np.ndarray) -> None:
        self.pending.append((grp, vals, flat))
        self.n += grp.size
        if self.n > self.LIMIT:
            self.merge()

    def merge(self) -> None:
        if self.pending:
            g, v, i = (np.concatenate(a) for a in zip(*self.pending))
            _top_merge(self.top_v, self.top_i, np.unique(g), g, v, i)
            self.pending.clear()
            self.n = 0


def _top_merge(top_v: np.ndarray, top_i: np.ndarray, rows: np.ndarray, grp: np.ndarray, vals: np.ndarray,
               flat: np.ndarray) -> None:
    """Merge candidates (tensor `grp`, value, flat index) into the top lists of the tensors `rows`
    (ascending): each keeps its TOP_CHANNELS largest, ties to the lower index."""
    width = top_v.shape[1]
    g = np.concatenate([np.repeat(rows, width), grp])
    v = np.concatenate([top_v[rows].reshape(-1), vals])
    i = np.concatenate([top_i[rows].reshape(-1), flat])
    order = np.lexsort((i, -v.astype(np.float64), g))
    g, v, i = g[order], v[order], i[order]
    start = np.searchsorted(g, rows)  # where each tensor's run begins (every run has >= width entries)
    rank = np.arange(g.size) - start[np.searchsorted(rows, g)]
    keep = rank < width
    top_v[rows] = v[keep].reshape(-1, width)
    top_i[rows] = i[keep].reshape(-1, width)


# --- skewness and kurtosis -----------------------------------------------------------------------

def moments(lay: Layout, reader: BlockReader, p1: Pass1, c: Centre,
            p2: Pass2) -> dict[int, tuple[float | None, float | None]]:
    """(skewness, excess kurtosis) of each ok tensor, about the exact mean from the moments about μ
    (δ = exact mean - μ, tiny against σ); None for equal values."""
    out: dict[int, tuple[float | None, float | None]] = {}
    for k in np.flatnonzero(c.ok):
        nl = int(lay.n_live[k])
        dl, e2, e3, e4 = p2.m1[k] / nl, p2.m2[k] / nl, p2.m3[k] / nl, p2.m4[k] / nl
        c2 = e2 - dl * dl
        c3 = e3 - 3 * dl * e2 + 2 * dl**3
        c4 = e4 - 4 * dl * e3 + 6 * dl * dl * e2 - 3 * dl**4
        if not (p1.vmax[k] > p1.vmin[k]):
            out[k] = (None, None)  # equal values: no shape
        elif c2 > 1e-2 * e2 and math.isfinite(c3) and math.isfinite(c4):
            out[k] = (float(c3 / c2**1.5), float(c4 / (c2 * c2) - 3.0))
        else:  # values equal but for their last bits (c2 is rounding noise here): in float64
            hit = lay.live[k, :: lay.q]  # the file's rows (each is q of ours)
            v = reader.whole(k).reshape(lay.n_mat, lay.n_in)[hit] / lay.cnt[k, :: lay.q][hit, None]
            out[k] = shape_moments(v)
    return out


def shape_moments(vals: np.ndarray) -> tuple[float | None, float | None]:
    """Skewness and excess kurtosis of the values, in float64; None when all values are equal."""
    v64 = vals.astype(np.float64).reshape(-1)
    d = v64 - v64.mean()
    d2 = d * d
    m2 = float(d2.mean())
    if not (m2 > 0 and v64.max() > v64.min()):  # equal values: no shape (m2 would be rounding noise)
        return None, None
    # d * d2, not d**3: numpy's pow on negative float64 bases is ~50x slower than a multiply
    return float(np.dot(d2, d) / d.size / m2**1.5), float(np.dot(d2, d2) / d.size / (m2 * m2) - 3.0)


# --- CosSim -------------------------------------------------------------------------------------

def cos_f32(a: np.ndarray, b: np.ndarray) -> float | None:
    """llama.cpp's compute_cossim of two flat vectors: float32 inner products in order, no guard (we
    return None instead)."""
    dp = np.cumsum(a * b, dtype=F32)[-1] if a.size else F32(0)
    ma = np.sqrt(np.cumsum(a * a, dtype=F32)[-1] if a.size else F32(0), dtype=F32)
    mb = np.sqrt(np.cumsum(b * b, dtype=F32)[-1] if b.size else F32(0), dtype=F32)
    return _cos_of(dp, ma, mb)


def _cos_of(dp: np.float32, ma: np.float32, mb: np.float32) -> float | None:
    denom = F32(ma * mb)
    if not np.isfinite(dp) or denom == 0 or not np.isfinite(denom):
        return None
    return float(F32(dp / denom))


def _cossim(k: int, col: Column, p1: Pass1, partner_cos: dict[int, float | None]) -> float | None:
    """CosSim of column k with block N-1's tensor: from pass 1's raw inner products (llama's
    compute_cossim, float32) when that is the column before, else apart."""
    if col.cos_undefined:
        return None
    if col.cos_partner is not None:
        return partner_cos[k]
    if col.prev_adjacent and k > 0:
        return _cos_of(p1.dp[k - 1], np.sqrt(p1.mag[k], dtype=F32), np.sqrt(p1.mag[k - 1], dtype=F32))
    return 0.0  # llama leaves 0 when blk N-1 has no such tensor (always so for blk 0)


# --- the finish ---------------------------------------------------------------------------------

def finish(cols: list[Column], lay: Layout, results: list[TensorResult], p1: Pass1, c: Centre, p2: Pass2,
           shape: dict[int, tuple[float | None, float | None]],
           partner_cos: dict[int, float | None]) -> list[TensorResult]:
    """Each non-helper column's numbers, in float32 as llama prints them."""
    out: list[TensorResult] = []
    for k, col in enumerate(cols):
        if col.helper:
            continue
        r = results[k]
        r.cossim = _cossim(k, col, p1, partner_cos)
        if r.skipped or not c.ok[k]:
            out.append(r)
            continue
        nf = F32(lay.n_live[k])
        nl = int(lay.n_live[k])
        r.n = nl
        r.total, r.vmin, r.vmax = float(p1.total[k]), float(p1.vmin[k]), float(p1.vmax[k])
        r.mean, r.dev = float(c.mean[k]), float(c.dev[k])
        r.active = float(F32(1) - F32(p1.inactive[k]) / nf)
        entropy = F32(-p2.ent[k]) if p1.total[k] > 0 else F32(0.0)
        r.entropy = float(entropy)
        r.entropy_norm = float(F32(entropy / F32(math.log2(nl)))) if nl > 1 else 0.0
        r.zd = float(F32(F32(p2.zcount[k] if c.dev[k] > 0 else 0) / nf))  # ZD: the fraction with z > 1
        r.skewness, r.kurtosis = shape[k]
        r.dead = int(p1.zeros[k])
        r.top_channels = [int(i) for i in p2.top_i[k, : p2.n_top[k]]]
        r.top_values = [float(v) for v in p2.top_v[k, : p2.n_top[k]]]
        out.append(r)
    return out


def run_all(batches: list[list[Column]], path: str | None, cancelled: Callable[[], bool] | None,
            progress: Callable[[int], None] | None = None, threads: int | None = None,
            fork: bool = False) -> dict[str, TensorResult]:
    """Every batch's statistics by tensor name (engine.run_all with run_batch)."""
    return engine.run_all(run_batch, batches, path, cancelled, progress, threads, fork)


__all__ = ["TensorResult", "run_all", "run_batch", "zd_threshold", "shape_moments", "cos_f32"]
