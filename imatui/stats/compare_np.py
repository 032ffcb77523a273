"""The diff's compare pass in numpy, for small diffs: numba's start (~0.7 s a process) costs more than
the compiled loops of imatui.stats.compare save below some 30 M channel pairs (a dense model's
imatrix has well under 1 M; a DeepSeek-sized MoE file 250 M). The same results to about 1e-15.

The work goes by pieces of PIECE_ELEMENTS elements of the batch (each tensor's share of a read
block's rows), as (tensor, element) float64 matrices that stay in a core's L2 cache.
"""

from __future__ import annotations

import numpy as np

from imatui.stats.engine import rowdot, scratch_array

_TINY = np.finfo(np.float64).tiny
# the compare pass holds four float64 (tensor, element) matrices: it works on pieces of 2^15 elements
# (256 KB a matrix), which keep them in a core's L2 cache
PIECE_ELEMENTS = 1 << 15


def compare_block(raw_a: np.ndarray, raw_b: np.ndarray, r0: int, r1: int, w: int, sa: np.ndarray,
                  sb: np.ndarray, both: np.ndarray, js2: np.ndarray, pq: np.ndarray, pp: np.ndarray,
                  qq: np.ndarray, best: np.ndarray, best_i: np.ndarray, best_p: np.ndarray,
                  best_q: np.ndarray, scratch: dict) -> None:
    """imatui.stats.compare.compare_block's work on the read block of rows r0..r1 (raw_a, raw_b: (K,
    (r1 - r0) · w) float32), in numpy: the same sums into the same arrays; both (K, all rows) marks the
    rows live in both files (the others are no top-channel candidates)."""
    K = raw_a.shape[0]
    c_max = max(1, PIECE_ELEMENTS // K)  # elements of each tensor per piece
    P, Q, R, T, S, X = (scratch_array(scratch, nm, (K, c_max), np.float64) for nm in "PQRTSX")
    for g0, g1, c0, c1 in _pieces(r0, r1, w, c_max):
        m, cw = g1 - g0, c1 - c0
        L = m * cw
        # the first K·L values of each scratch matrix, as one contiguous (K, L) array
        p, q, r, t, sx, x = (B.reshape(-1)[: K * L].reshape(K, L) for B in (P, Q, R, T, S, X))
        a3 = raw_a.reshape(K, r1 - r0, w)[:, g0 - r0 : g1 - r0, c0:c1]
        b3 = raw_b.reshape(K, r1 - r0, w)[:, g0 - r0 : g1 - r0, c0:c1]
        np.multiply(a3, sa[:, g0:g1, None], out=p.reshape(K, m, cw))
        np.multiply(b3, sb[:, g0:g1, None], out=q.reshape(K, m, cw))
        p3, q3 = p.reshape(K, m, cw), q.reshape(K, m, cw)
        pq[:, g0:g1] += rowdot(p3, q3)
        pp[:, g0:g1] += rowdot(p3, p3)
        qq[:, g0:g1] += rowdot(q3, q3)
        # the top channel: largest |q - p|, the first of equals
        d = np.subtract(q, p, out=t)
        u = np.abs(d, out=r)
        dead = ~both[:, g0:g1]
        if dead.any():  # rows not live in both are no candidates
            u.reshape(K, m, cw)[dead] = -1.0
        i = np.argmax(u, axis=1)
        v = u[np.arange(K), i]
        better = v > best
        if better.any():
            best_i[better] = ((g0 + i // cw) * w + c0 + i % cw)[better]
            best_p[better] = p[np.arange(K), i][better]
            best_q[better] = q[np.arange(K), i][better]
            best[better] = v[better]
        js2 += _js_terms(p, q, d, sx, x, r)


def _pieces(r0: int, r1: int, w: int, c_max: int):
    """(g0, g1, c0, c1): rows g0..g1, columns c0..c1 of a read block, about c_max elements of each tensor
    (whole rows while they fit, else parts of one row), in element order."""
    if w <= c_max:
        step = c_max // w
        for g0 in range(r0, r1, step):
            yield g0, min(r1, g0 + step), 0, w
        return
    for g in range(r0, r1):
        for c0 in range(0, w, c_max):
            yield g, g + 1, c0, min(w, c0 + c_max)



# g(d) = ½ [(1 + d) ln(1 + d) + (1 - d) ln(1 - d)] = Σ_k≥1 d^2k / (2k (2k - 1)) = x h(x) with x = d² and
# h(x) = Σ_k≥1 x^(k-1) / (2k (2k - 1)). For x ≤ SERIES_X (|d| ≤ 0.5: a channel's share changed by less
# than a factor 3 = 1.5 / 0.5), h is the polynomial SERIES (coefficients of x^0 .. x^11): its values
# at 400 Chebyshev nodes of [0, 0.25] fitted in the Chebyshev basis, near the best polynomial of its
# degree. It is within 4.2e-16 of h there (tests/test_diff.py checks it against the series in long
# double); the series itself would need 22 terms. Above, the logarithms.
SERIES_X = 0.25
SERIES = (0.4999999999999999, 0.08333333333338415, 0.033333333323064526, 0.01785714363574019,
           0.011111081152825745, 0.0075764295607603505, 0.005485050595194626, 0.004253233214845328,
           0.0027472769925674352, 0.004650904733177156, -0.0025776338199686626, 0.00749660936841451)
# Picking the channels above out costs about 25 ns each (two logarithms and the gathers), against about
# 6-8 ns a channel for the polynomial and 17 ns for the logarithms of all: a piece with more than _LOG_SHARE
# of its channels above takes the logarithms for all (SmolLM2's prose and code files: 7 % above 0.5;
# checkpoints of one run: well under 1 %). Its nearly equal tensors, if any, then have the digits of
# the logarithms (the rounding of their arguments: 1e-16 / d of each channel's term or more).
_LOG_SHARE = 0.3


def _js_terms(p: np.ndarray, q: np.ndarray, d: np.ndarray, s: np.ndarray, x: np.ndarray,
              h: np.ndarray) -> np.ndarray:
    """Per row (tensor), Σ p ln(p/m) + q ln(q/m) (twice its Jensen–Shannon divergence, nats) of a (K, L)
    piece; d holds q - p on entry and is overwritten; s, x and h are scratch of p's shape. All
    contiguous: the channels far from equal are picked and put back through flat views.

    Each channel adds (p + q) g(d) with d = (q - p) / (p + q). Written as p ln(2p / (p + q)) + ..., two
    nearly equal files lose digits: the terms are of size p·d and their sum of size p·d², so the
    rounding of the logarithms' arguments (1e-16) weighs 1e-16 / d or more of the result (1e-9 to
    1e-5 of it between files 1e-4 to 1e-6 apart, as checkpoints of one run). The polynomial in d² keeps
    them to the last bits (nothing in it cancels), and costs less than half as much as the two logarithms
    (glibc's scalar log without AVX-512: 5-8 ns a value, slowest near 1, where nearly equal files put
    every ratio).
    """
    np.add(p, q, out=s)
    s += _TINY  # 0 / 0 stays out: channels zero in both files get d = 0 and add 0
    np.divide(d, s, out=d)
    np.multiply(d, d, out=x)
    far = x > SERIES_X
    if np.count_nonzero(far) > _LOG_SHARE * x.size:
        return _log_terms(p, q, s, h)
    return _series_terms(d, s, x, h, far)


def _series_terms(d: np.ndarray, s: np.ndarray, x: np.ndarray, h: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Per row, Σ s g(d) with x = d²: the polynomial, and the logarithms for the channels where far."""
    h.fill(SERIES[-1])
    for c in SERIES[-2::-1]:
        h *= x
        h += c
    idx = np.flatnonzero(far)
    if idx.size:
        df = d.reshape(-1)[idx]
        g = np.add(df, 1.0)
        lg = g + _TINY
        np.log(lg, out=lg)
        g *= lg
        np.subtract(1.0, df, out=df)
        np.add(df, _TINY, out=lg)
        np.log(lg, out=lg)
        df *= lg
        g += df
        g *= 0.5
        g /= x.reshape(-1)[idx]
        h.reshape(-1)[idx] = g
    s *= x
    return rowdot(s, h)


def _log_terms(p: np.ndarray, q: np.ndarray, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row, Σ p ln r + q ln(2 - r) with r = p / m = 2p / s (s = p + q + tiny); s and r are
    overwritten (scratch).

    The smallest normal float keeps ln 0 out (0 · ln tiny is 0)."""
    np.divide(p, s, out=r)
    r *= 2
    np.subtract(2.0, r, out=s)
    s += _TINY
    np.log(s, out=s)
    out = rowdot(q, s)
    r += _TINY
    np.log(r, out=r)
    return out + rowdot(p, r)
