"""The diff's compare pass as compiled loops (numba): one sweep over each row of a read block of A and
B gives the row's cosine sums, its Jensen–Shannon terms and its largest |q - p|.

In numpy the same pass took some 25 array sweeps a channel pair (the polynomial alone 22), 20-25 ns;
here a row's main loop is one vectorized loop (AVX2: 4 lanes) of a few ns a pair. The channels far
from equal take the logarithms in a second loop over them alone, and the top channel is looked up
again in the rare rows that hold a new maximum.

Inputs are checked before (pass 1: finite, non-negative), so the main loop may assume finite values
and reassociate its sums (the vector lanes keep partial sums): the results agree with a float64 sum
in element order to about 1e-15 (relative), and are the same from run to run, but may differ in the
last bits on a CPU of another vector width. The main loop stores nothing: a loop that stores gets a
run-time check for overlap with what it reads, and where its scratch happened to lie close after a
read row, the scalar fallback added in another order (1 ulp, from one run to the next).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from imatui.stats.compare_np import SERIES, SERIES_X

# the divergence's polynomial h(x), x = d², for x ≤ SERIES_X (compare_np says how it was fitted)
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11 = SERIES
_TINY = float(np.finfo(np.float64).tiny)  # p + q + tiny: channels zero in both files get d = 0 and add 0

# the main loop's float flags: its inputs are finite (checked in pass 1), its sums may be reassociated.
# No "contract" (fused multiply-adds): |q - p| is computed again in _first and must come out the same
_FAST = {"reassoc", "nsz", "nnan", "ninf"}


def _jit(**options):
    """numba.njit with the options of every loop here, cached on disk (beside this module, or in numba's
    user cache: NUMBA_CACHE_DIR). Where numba finds no writable place for it (a read-only install, no
    writable home), compiled in each process instead (~3 s a diff) rather than failing."""
    def wrap(f):
        try:
            return numba.njit(cache=True, nogil=True, error_model="numpy", **options)(f)
        except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
            return numba.njit(nogil=True, error_model="numpy", **options)(f)

    return wrap


@intrinsic
def _fmax(typingctx, x, y):
    """LLVM's maxnum: a max the loop vectorizer turns into a vector reduction (Python's max is not)."""
    sig = types.float64(types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d]), "llvm.maxnum.f64")
        return builder.call(fn, args)

    return sig, codegen


@_jit(inline="always")
def _h(x):
    """SERIES at x (Horner)."""
    h = _C11
    h = h * x + _C10
    h = h * x + _C9
    h = h * x + _C8
    h = h * x + _C7
    h = h * x + _C6
    h = h * x + _C5
    h = h * x + _C4
    h = h * x + _C3
    h = h * x + _C2
    h = h * x + _C1
    return h * x + _C0


@_jit(fastmath=_FAST)
def _row_main(a, b, fa, fb):
    """One row (a and b its raw values in A and B): Σ pq, Σ p², Σ q², Σ (p + q) d² h(min(d², SERIES_X)) (the
    divergence's terms, right where d² ≤ SERIES_X), max |q - p|, and how many channels are above."""
    spq = 0.0
    spp = 0.0
    sqq = 0.0
    sj = 0.0
    umax = 0.0
    nfar = 0
    for c in range(a.size):
        p = a[c] * fa
        q = b[c] * fb
        spq += p * q
        spp += p * p
        sqq += q * q
        dd = q - p
        umax = _fmax(umax, abs(dd))
        s = p + q
        d = dd / (s + _TINY)
        x = d * d
        nfar += x > SERIES_X
        sj += (s * x) * _h(min(x, SERIES_X))
    return spq, spp, sqq, sj, umax, nfar


@intrinsic
def _bits(typingctx, x):
    """The bits of a float64 as an int64 (a bitcast: vectorizes)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _float(typingctx, i):
    """The float64 of these bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# ln of a normal float64 as fdlibm's (musl's) log computes it, within 1 ulp: y = 2^k m with m in
# [√½, √2), ln m = ln(1 + f) from s = f / (2 + f) and a polynomial in s². Written without branches or
# calls, so that the loop over the far channels vectorizes (numba has no vector log without SVML).
_LG1, _LG2, _LG3, _LG4 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01
_LG5, _LG6, _LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10


@_jit(inline="always")
def _log(y):
    ix = _bits(y) + ((0x3FF00000 - 0x3FE6A09E) << 32)  # the exponent of y / √½, rounded down
    k = (ix >> 52) - 0x3FF
    f = _float((ix & 0x000FFFFFFFFFFFFF) + (0x3FE6A09E << 32)) - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    dk = float(k)
    return s * (hfsq + t1 + t2) + dk * _LN2_LO - hfsq + f + dk * _LN2_HI


@_jit()
def _row_far(a, b, fa, fb, pf, qf):
    """For the channels of the row with d² > SERIES_X: Σ p ln(2p / s) + q ln(2q / s) (s = p + q) less
    what _row_main added for them. They are picked out without branches, then one vectorized loop.

    A channel that this loop and _row_main put on different sides of SERIES_X (their d² may differ in
    the last bit) is still right: there both give the same value to the last bits."""
    n = 0
    for c in range(a.size):
        p = a[c] * fa
        q = b[c] * fb
        dd = q - p
        s = p + q
        pf[n] = p
        qf[n] = q
        n += dd * dd > SERIES_X * (s * s)  # d² > SERIES_X, without a division
    for i in range(n):
        p = pf[i]
        q = qf[i]
        s = p + q
        r = p / s  # s > 0: d² > SERIES_X
        d = 1.0 - 2.0 * r
        x = d * d
        # a zero p or q: ln of the smallest normal float, times 0
        pf[i] = (p * _log(_fmax(2.0 * r, _TINY)) + q * _log(_fmax(2.0 - 2.0 * r, _TINY))
                 - (s * x) * _h(min(x, SERIES_X)))
    return _sum(pf, n)


@_jit(fastmath=_FAST)
def _sum(x, n):
    t = 0.0
    for i in range(n):
        t += x[i]
    return t


@_jit()
def _first(a, b, fa, fb):
    """The row's channel of the largest |q - p| (the first of equals), and that |q - p|."""
    best = -1.0
    at = 0
    for c in range(a.size):
        u = abs(b[c] * fb - a[c] * fa)
        if u > best:
            best = u
            at = c
    return at, best


@_jit()
def compare_block(a, b, n, w, r0, sa, sb, js2, pq, pp, qq, best, best_i, best_p, best_q, pf, qf):
    """The rows r0.. of a read block: a and b (K, ≥ n) float32, each tensor's n = rows · w raw values of
    A and B; sa and sb (K, all rows) each row's factor 1 / (count · Σ), 0 where the row is skipped.

    Adds each row's Σ pq, Σ p², Σ q² into pq, pp, qq (K, all rows) and Σ (p + q) g(d) into js2 (K,);
    best, best_i, best_p, best_q (K,) keep each tensor's largest |q - p| so far (the first of equals in
    element order), its flat index and its p and q. pf and qf: float64 scratch of w."""
    K = a.shape[0]
    for k in range(K):
        ak = a[k]
        bk = b[k]
        for g in range(n // w):
            row = r0 + g
            fa = sa[k, row]
            fb = sb[k, row]
            if fa == 0.0:
                continue
            # the row as slices: indexed from 0 by the loop's counter, with no wraparound for
            # negative indices to compute (a[o + c] loaded its floats one by one: 3x slower)
            ar = ak[g * w : (g + 1) * w]
            br = bk[g * w : (g + 1) * w]
            spq, spp, sqq, sj, umax, nfar = _row_main(ar, br, fa, fb)
            if nfar:
                sj += _row_far(ar, br, fa, fb, pf, qf)
            if umax > best[k]:
                c, best[k] = _first(ar, br, fa, fb)
                best_i[k] = row * w + c
                best_p[k] = ar[c] * fa
                best_q[k] = br[c] * fb
            pq[k, row] += spq
            pp[k, row] += spp
            qq[k, row] += sqq
            js2[k] += sj


_loaded = False


def loaded() -> bool:
    """Whether load() ran in this process."""
    return _loaded


def load() -> None:
    """Compile compare_block, or load it from numba's cache (about 0.3 s the first time in a process,
    ~3 s the first time after an install): a process that forks its workers calls this first, so that
    they share the code instead of each loading it (and LLVM's pages) again."""
    global _loaded
    if _loaded:
        return
    a = np.zeros((1, 1), np.float32)
    s = np.ones((1, 1))
    v = np.zeros(1)
    compare_block(a, a, 1, 1, 0, s, s, v, s.copy(), s.copy(), s.copy(), v.copy(), np.zeros(1, np.int64),
                  v.copy(), v.copy(), v.copy(), v.copy())
    _loaded = True
