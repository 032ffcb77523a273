"""llama.cpp's per-tensor statistics for many tensors at once, digit for digit and fast.

llama-imatrix sums in float32, one element after the other (std::accumulate with 0.0f). Such a sum
is a chain of dependent additions: numpy's cumsum follows it exactly but at ~3 ns an element, and a
file of 250 M floats needs five such chains (Σ, Σv², entropy, and the two CosSim inner products).
Summing over axis 0 of a C-ordered (rows, columns) matrix also adds row after row, so each column is
still an exact element-by-element float32 chain, yet numpy vectorizes across the columns. So tensors
of one shape are laid side by side as columns (a batch) and read block by block: every chain of every
tensor in the batch advances with one vectorized call. Adding +0.0 leaves a float32 sum unchanged,
which lets the rows of experts never hit (count 0, skipped by llama) stay in place as zeros.

Two passes per batch, each reading the tensors block by block (never a whole file in memory): the
first gives Σ, Σv², min, max, counts and the CosSim inner products, the second (which needs Σ, μ
and σ) the entropy, ZD, the top channels and the moments for skewness and kurtosis. A read block
(8 MB) is computed on in sub-blocks of 2^18 floats, so that numpy's sweeps stay in a core's L2 cache;
each tensor's rows are cut into pieces of w elements (w divides a row, and the pieces share the row's
count) so that even 7168-wide experts fit. Where the per-element chains allow, one numpy call does
two jobs: einsum("ij,ij->j") rounds each product and adds in row order (checked at import), booleans
are counted eight to a 64-bit word, BLAS dot products give the moments.

numpy releases the GIL only inside its loops, so threads wait for each other between calls (two
threads on two cores do the work of ~1.6). The CLI, a single-threaded caller, forks worker processes
that take shares of the batches and send their results back by pipe (run_all's `fork`); the app,
which has threads of its own, uses a thread pool with larger sub-blocks (fewer calls, less waiting).
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from imatui.errors import TruncatedError
from imatui.imatrix import Entry

F32 = np.float32
ACTIVE_THRESHOLD = F32(1e-5)
TOP_CHANNELS = 8
MAX_COLUMNS = 64  # tensors per batch: wide enough to vectorize the chains, small enough to balance threads
MIN_COLUMNS = 16  # split a group for the threads only down to this width
BLOCK_ELEMENTS = 1 << 21  # elements read per block: about 8 MB (few syscalls)
# elements computed on at a time: each numpy sweep over a sub-block stays in a core's L2 cache (2 MB on the
# Xeon that the benchmark runs on, where a sweep over an 8 MB block runs 2-4x slower from L3)
SUB_ELEMENTS = 1 << 18
MIN_WIDTH = 256  # narrowest row a tensor's rows are cut into for the sub-blocks
# threads sharing the GIL wait for each other between numpy calls: fewer, larger ones (1 GB file, 2 threads on
# 2 cores: 1.28-1.31 s at 2^19, 1.34-1.38 s at 2^18 and at 2^20, 1.46 s at 2^21)
THREAD_SUB_ELEMENTS = 1 << 19
_TINY = np.finfo(F32).smallest_subnormal
_HAS_PREADV = hasattr(os, "preadv")


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


@dataclass
class Column:
    name: str
    entry: Entry
    prev_adjacent: bool  # the same tensor of block N-1 is the column before (or the batch's helper)
    helper: bool = False  # only read for the next column's CosSim
    cos_undefined: bool = False  # block N-1 has this tensor in another size: no CosSim (llama reads past it)
    cos_partner: Entry | None = None  # block N-1's tensor, another shape of the same size: CosSim apart


def _chain(block: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Continue float32 element-by-element sums: acc[k], then block[0, k], block[1, k], ...

    `block` is a temporary of ours (C-ordered rows x columns) and is modified.
    """
    if block.shape[0] == 0:
        return acc
    block[0] += acc  # fl(acc + x0): the next step of each chain
    if block.shape[1] >= 8:
        if _EINSUM_IN_ORDER and block.flags.c_contiguous:
            return np.einsum("ij->j", block)  # 2-3x faster than add.reduce on ~60 columns, same order
        return np.add.reduce(block, axis=0)
    # too few columns to vectorize across: numpy's cumsum follows the chain exactly too
    return np.array([np.cumsum(block[:, k], dtype=F32)[-1] for k in range(block.shape[1])], dtype=F32)


def _chain_products(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Continue float32 chains with the products fl(a[i, k] * b[i, k]), i >= 1 (row 0 is ours to use).

    einsum("ij,ij->j") rounds each product and adds in row order (checked below), one sweep instead
    of a multiply and a sum; its sum starts at 0, so row 0 holds acc * 1.
    """
    a[0] = acc
    b[0] = 1
    if _EINSUM2_IN_ORDER and a.shape[1] >= 8:  # (narrower: einsum's loop for few columns may reorder)
        return np.einsum("ij,ij->j", a, b)
    np.multiply(a, b, out=a)
    return _chain(a[1:], acc)


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """The Trues of each row of a C-contiguous (K, L) boolean matrix.

    Eight booleans to a 64-bit word: summing up to 255 words keeps every byte's sum in its byte, so
    numpy adds 8 at a time (4x faster than a uint8 sum along rows).
    """
    k, n = mask.shape
    if n % 8 or not mask.flags.c_contiguous:
        return np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.int64)
    part = np.add.reduceat(mask.view(np.uint64), np.arange(0, n // 8, 255), axis=1)
    return part.view(np.uint8).reshape(k, -1).sum(axis=1, dtype=np.int64)


def _flat2(flat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return flat[: rows * cols].reshape(rows, cols)


def _einsum_in_order() -> bool:
    """Whether einsum("ij->j") adds row after row in float32, as add.reduce(axis=0) does.

    numpy's einsum does so for a C-ordered matrix of several columns (each column is one chain of
    `out[j] += a[i, j]`); this build is checked once, on sums whose order shows in the last digit.
    """
    rng = np.random.default_rng(1)
    for cols in (8, 61):
        a = (rng.random((1031, cols)) ** 3 * 1e3).astype(F32)
        want = np.cumsum(a, axis=0, dtype=F32)[-1]
        with np.errstate(all="ignore"):
            if not np.array_equal(np.einsum("ij->j", a), want):
                return False
    return True


_EINSUM_IN_ORDER = _einsum_in_order()


def _einsum_products_in_order() -> bool:
    """Whether einsum("ij,ij->j") adds the rounded products row after row, with no fused multiply-add:
    checked on products whose rounding shows in the sums."""
    rng = np.random.default_rng(2)
    for cols in (8, 61):
        a = (rng.random((1031, cols)) * 1e3).astype(F32)
        b = (rng.random((1031, cols)) * 1e3).astype(F32)
        want = np.cumsum(a * b, axis=0, dtype=F32)[-1]
        with np.errstate(all="ignore"):
            if not np.array_equal(np.einsum("ij,ij->j", a, b), want):
                return False
    return True


_EINSUM2_IN_ORDER = _einsum_products_in_order()


class _Source:
    """Reads flat element ranges of one tensor's sums2: pread from the file, or slices of an array."""

    def __init__(self, entry: Entry):
        src = entry._sums2
        self.slice = src if hasattr(src, "stamp") and hasattr(src, "offset") else None
        self.array: np.ndarray | None = None
        if self.slice is None:
            arr = src() if callable(src) else src
            self.array = np.ascontiguousarray(arr, dtype=F32).reshape(-1)

    def fd_offset(self, fds: dict) -> tuple[int, int]:
        """The open file (checked against the stamp on first open) and the tensor's byte offset."""
        s = self.slice
        fd = fds.get(s.path)
        if fd is None:
            try:
                fd = os.open(s.path, os.O_RDONLY)
            except FileNotFoundError:
                raise TruncatedError("the file disappeared while it was being read", s.path) from None
            fds[s.path] = fd
            check_stamp(fd, s)
        return fd, s.offset

    def read_into(self, out: np.ndarray, start: int, fds: dict) -> None:
        n = out.size
        if self.array is not None:
            out[:] = self.array[start : start + n]
            return
        s = self.slice
        fd, _ = self.fd_offset(fds)
        if _HAS_PREADV:  # straight into the block matrix, no intermediate bytes
            got = os.preadv(fd, [memoryview(out).cast("B")], s.offset + 4 * start)
        else:
            data = os.pread(fd, 4 * n, s.offset + 4 * start)
            got = len(data)
            if got == 4 * n:
                out[:] = np.frombuffer(data, dtype="<f4")
        if got != 4 * n:
            raise TruncatedError("the file ends inside its tensor data", s.path)


def check_stamp(fd: int, s) -> None:
    st = os.fstat(fd)
    if (st.st_size, st.st_mtime_ns) != tuple(s.stamp):
        raise TruncatedError("the file changed while it was being read (is it being rewritten?)", s.path)


def _scratch(cache: dict, name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A C-ordered array from `cache` (one thread's), kept for its next batch: no fresh pages to fault in."""
    n = shape[0] * shape[1]
    key = (name, np.dtype(dtype).str)
    arr = cache.get(key)
    if arr is None or arr.size < n:
        arr = cache[key] = np.empty(max(n, 1), dtype)
    return arr[:n].reshape(shape)


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


def run_batch(cols: list[Column], path: str | None, cancelled: Callable[[], bool] | None,
              scratch: dict | None = None, sub_elements: int | None = None) -> list[TensorResult]:
    """Statistics of the batch's non-helper columns (all of one shape), in column order.

    `scratch`: block buffers kept from an earlier batch of the same thread (filled in here).
    `sub_elements`: elements computed on at a time (default SUB_ELEMENTS). Threads sharing the GIL
    want fewer, larger numpy calls (THREAD_SUB_ELEMENTS).
    """
    if sub_elements is None:
        sub_elements = SUB_ELEMENTS
    if scratch is None:
        scratch = {}
    n_mat, n_in = cols[0].entry.shape
    n = n_mat * n_in
    K = len(cols)
    # The element order is all that the chains see, so each tensor is treated as rows of w elements
    # (w divides n_in: a row of the file is q of them, and they share its count): K * w, a row of
    # the batch, then fits a sub-block even for 7168-wide experts
    w = _row_width(n_in, K, sub_elements)
    q = n_in // w
    rows = n_mat * q
    sub_rows = max(1, min(rows, sub_elements // max(1, K * w)))
    rows_per_block = max(sub_rows, min(rows, BLOCK_ELEMENTS // max(1, K * w)) // sub_rows * sub_rows)
    sources = [_Source(c.entry) for c in cols]
    counts = np.stack([np.asarray(c.entry.counts, dtype=np.float64).reshape(-1) for c in cols])  # (K, n_mat)
    live = counts > 0
    n_live = live.sum(axis=1) * n_in
    # llama divides a float by the int64 count: the count becomes a float32
    cnt = np.repeat(np.where(live, counts, np.inf).astype(F32), q, axis=1)  # x / inf = 0 for the rows it skips
    live = np.repeat(live, q, axis=1)  # (K, rows)

    results = [TensorResult(c.name) for c in cols]
    total = np.zeros(K, F32)
    sqr = np.zeros(K, F32)
    mag = np.zeros(K, F32)
    dp = np.zeros(K, F32)  # dp[j]: column j with column j + 1
    inactive = np.zeros(K, np.int64)
    zeros = np.zeros(K, np.int64)
    # each tensor's largest values, best first (ties: the lower index), padded with -inf
    top_v = np.full((K, TOP_CHANNELS), -np.inf, F32)
    top_i = np.full((K, TOP_CHANNELS), np.iinfo(np.int64).max, np.int64)
    kk = np.minimum(TOP_CHANNELS, n_live).astype(np.int64)
    rawmax = np.empty((K, rows), F32)  # each row's largest and smallest raw value
    rawmin = np.empty((K, rows), F32)
    # the (tensor, element) matrices that get transposed have a row stride of an odd multiple of 64 bytes:
    # with a multiple of 4096 (7168-wide experts, two rows) every row maps to the same cache sets and
    # the transposing copy runs 2.5x slower
    l_max = rows_per_block * w
    buf = _scratch(scratch, "raw", (K, _padded(l_max)), F32)[:, :l_max]
    s_max = sub_rows * w
    pbuf = _scratch(scratch, "p", (K, _padded(s_max)), F32)[:, :s_max]
    # scratch of the (element, tensor) passes, reused sub-block after sub-block (and batch after batch)
    tbuf = _scratch(scratch, "t", (s_max + 1, K), F32)  # + 1: pass 2's row of chain seeds
    vbuf = _scratch(scratch, "v", (s_max, K), F32)
    sbuf = _scratch(scratch, "s", (s_max + 1, K), F32)
    tile = next(t for t in (16, 8, 4, 2, 1) if w % t == 0)
    fds: dict[str, int] = {}
    full_views = [memoryview(buf[k]).cast("B") for k in range(K)] if _HAS_PREADV else None

    def blocks():
        """(r0, r1, raw, dead): read blocks of rows r0..r1, raw (K, (r1 - r0) * w) a view of buf."""
        for r0 in range(0, rows, rows_per_block):
            if cancelled is not None and cancelled():
                raise InterruptedError("statistics cancelled")
            r1 = min(rows, r0 + rows_per_block)
            e0, e1 = r0 * w, r1 * w
            raw = buf[:, : e1 - e0]
            if e1 - e0 == buf.shape[1]:
                views = full_views
            else:
                views = [memoryview(raw[k]).cast("B") for k in range(K)] if _HAS_PREADV else None
            nbytes = 4 * (e1 - e0)
            for k, src in enumerate(sources):
                if views is not None and src.array is None:  # one syscall straight into the block
                    fd, off = src.fd_offset(fds)
                    if os.preadv(fd, [views[k]], off + 4 * e0) != nbytes:
                        raise TruncatedError("the file ends inside its tensor data", src.slice.path)
                else:
                    src.read_into(raw[k], e0, fds)
            yield r0, r1, raw, ~live[:, r0:r1]
        # a file rewritten while we read it (llama-imatrix rewrites in place) must not give numbers
        for src in sources:
            if src.slice is not None:
                check_stamp(fds[src.slice.path], src.slice)

    def subs(r0: int, r1: int, raw: np.ndarray):
        """(s0, s1, part): the sub-blocks of a read block, part (K, (s1 - s0) * w) a view of raw."""
        for s0 in range(r0, r1, sub_rows):
            s1 = min(r1, s0 + sub_rows)
            yield s0, s1, raw[:, (s0 - r0) * w : (s1 - r0) * w]

    athr = _raw_thresholds(cnt, ACTIVE_THRESHOLD)  # (K, rows)
    # each row's count repeated `tile` times along a wide row: a long inner loop for numpy
    ctile = np.tile(cnt.T[:, None, :], (1, 1, tile))  # (rows, 1, tile * K)
    gbuf = _scratch(scratch, "g", (K, l_max), np.bool_).reshape(-1)  # a read block (l_max >= s_max)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # top-list candidates (tensor, v, index)
    n_pending = 0

    def merge_pending() -> None:
        nonlocal n_pending
        if pending:
            g, v, i = (np.concatenate(a) for a in zip(*pending))
            _top_merge(top_v, top_i, np.unique(g), g, v, i)
            pending.clear()
            n_pending = 0

    def whole(entry: Entry) -> np.ndarray:
        """A tensor's flat sums2, read as the blocks are (stamp-checked), for the rare cases done apart."""
        src = _Source(entry)
        arr = np.empty(entry.size, F32)
        src.read_into(arr, 0, fds)
        if src.slice is not None:
            check_stamp(fds[src.slice.path], src.slice)
        return arr

    try:
        with np.errstate(all="ignore"):
            # pass 1: Σ, Σv², each row's min and max, % active, zeros, CosSim inner products
            for r0, r1, raw, dead_rows in blocks():
                for s0, s1, part in subs(r0, r1, raw):
                    m = s1 - s0
                    p3 = part.reshape(K, m, w)
                    p3.max(axis=2, out=rawmax[:, s0:s1])  # v = fl(raw / c) is monotone in raw
                    p3.min(axis=2, out=rawmin[:, s0:s1])
                    # the float32 chains, on (element, tensor) matrices
                    L = m * w
                    rt = tbuf[:L]
                    np.copyto(rt, part.T)
                    vt = vbuf[:L]
                    # v = fl(raw / count), on the (element, tensor) matrix
                    np.divide(rt.reshape(m, w // tile, tile * K), ctile[s0:s1], out=vt.reshape(m, w // tile, tile * K))
                    row0 = vt[0].copy()  # _chain adds the running sum into the first row
                    total = _chain(vt, total)
                    vt[0] = row0
                    np.multiply(vt, vt, out=vt)  # in place: half the memory traffic of a second matrix
                    sqr = _chain(vt, sqr)
                    if K > 1:
                        # column j times column j + 1 as one contiguous multiply of the flat matrix shifted
                        # by one element (the last column pairs across rows: unused)
                        pr = vt  # free again: the sums of v and v^2 are done
                        flat, pflat = rt.reshape(-1), pr.reshape(-1)
                        np.multiply(flat[:-1], flat[1:], out=pflat[:-1])
                        pflat[-1] = 0
                        dp = _chain(pr, dp)
                    np.multiply(rt, rt, out=rt)
                    mag = _chain(rt, mag)
                # % active and dead channels, read block by read block: only rows with a v <= 1e-5 count
                m = r1 - r0
                c = cnt[:, r0:r1]
                r3 = raw.reshape(K, m, w)
                rmin = np.where(dead_rows, np.inf, rawmin[:, r0:r1] / c)
                cand = rmin <= ACTIVE_THRESHOLD
                n_cand = int(np.count_nonzero(cand))
                if 4 * n_cand > cand.size:  # most rows: the whole block, no row copies
                    le = np.less_equal(r3, athr[:, r0:r1, None], out=_flat2(gbuf, K, m * w).reshape(K, m, w))
                    inactive += _row_counts(le.reshape(K, m * w))
                elif n_cand:  # v <= 1e-5 is raw <= athr, each row's raw threshold
                    ks, rs = np.divmod(np.flatnonzero(cand), m)
                    le = r3[ks, rs] <= athr[ks, r0 + rs][:, None]
                    np.add.at(inactive, ks, np.add.reduce(le.view(np.uint8), axis=1, dtype=np.int32))
                if n_cand:  # dead channels: v == 0
                    ks, rs = np.divmod(np.flatnonzero(rmin == 0), m)
                    if ks.size:
                        vk = r3[ks, rs] / c[ks, rs][:, None]
                        np.add.at(zeros, ks, np.add.reduce((vk == 0).view(np.uint8), axis=1, dtype=np.int32))
            # each row's largest and smallest v; the rows llama skips take no part
            rmax_all = np.where(live, rawmax / cnt, -np.inf)
            vmax = rmax_all.max(axis=1)
            vmin = np.where(live, rawmin / cnt, np.inf).min(axis=1)

            mean = np.zeros(K, F32)
            dev = np.zeros(K, F32)
            ok = np.zeros(K, bool)
            for k, c in enumerate(cols):
                r = results[k]
                if c.helper:
                    continue
                if n_live[k] == 0:
                    r.skipped = True
                    continue
                if not np.isfinite(mag[k]):
                    bad = _count_nonfinite(sources[k], n, fds)
                    if bad:
                        r.error = f"tensor {c.name} has {bad} non-finite values (NaN or Inf)"
                        continue
                if vmin[k] < 0:
                    r.error = f"tensor {c.name} has negative sums of squares (min {float(vmin[k]):g})"
                    continue
                if not (np.isfinite(total[k]) and np.isfinite(sqr[k])):
                    r.error = (f"tensor {c.name} has values too large for float32 statistics "
                               f"(max {float(vmax[k]):g}: their sums overflow to Inf)")
                    continue
                nf = F32(n_live[k])
                mean[k] = F32(total[k] / nf)
                var = F32(F32(sqr[k] / nf) - F32(mean[k] * mean[k]))
                dev[k] = F32(np.sqrt(max(F32(0.0), var)))
                ok[k] = True
            if any(r.error for r in results):
                return [r for r, c in zip(results, cols) if not c.helper]

            # pass 2: entropy (needs Σ), ZD (needs μ, σ), top channels (need the row maxima), moments
            ent = np.zeros(K, F32)
            zcount = np.zeros(K, np.int64)
            m2 = np.zeros(K)
            m3 = np.zeros(K)
            m4 = np.zeros(K)
            m1 = np.zeros(K)  # llama's float32 μ is off by its sum's rounding: the moments are re-centred
            ones = np.ones(s_max, F32)
            safe_total = np.where(total > 0, total, F32(1)).astype(F32)
            safe_dev = np.where(dev > 0, dev, F32(1)).astype(F32)
            # llama counts fl(fl(v - μ) / σ) > 1; that is monotone in v, so it is v >= v* for one v*
            vstar = np.array([_z_threshold(mean[k], dev[k]) if ok[k] and dev[k] > 0 else np.inf
                              for k in range(K)], dtype=F32)
            # moments of d = v - μ, divided by σ only where a float32 sum of d^4 could overflow
            big = np.maximum(np.abs(vmax.astype(np.float64)), np.abs(vmin.astype(np.float64)))
            scale = np.where(n_live.astype(np.float64) * big**4 < 1e36, F32(1), safe_dev).astype(F32)
            need_scale = bool(np.any(scale != 1))
            zero_cols = np.flatnonzero(zeros)  # tensors with some v exactly 0 (dead channels)
            # a tensor's top values lie in its rows of the largest row maxima (kk of them, ties included):
            # a row below them has kk rows whose maxima beat its every value
            top_rows = np.zeros((K, rows), bool)
            for k in np.flatnonzero(ok & (kk > 0)):  # (helper columns are not ok)
                kth = np.partition(rmax_all[k], rows - kk[k])[rows - kk[k]] if rows > kk[k] else -np.inf
                top_rows[k] = (rmax_all[k] >= kth) & live[k]
            if ok.any():
                for r0, r1, raw, dead_block in blocks():
                    for s0, s1, vals in subs(r0, r1, raw):
                        dead_rows = dead_block[:, s0 - r0 : s1 - r0]
                        L = (s1 - s0) * w
                        r3 = vals.reshape(K, s1 - s0, w)  # v, in place: each pass reads the file again
                        np.divide(r3, cnt[:, s0:s1, None], out=r3)
                        ge = np.greater_equal(vals, vstar[:, None], out=_flat2(gbuf, K, L))  # skipped rows: 0 < v*
                        zcount += _row_counts(ge)
                        ks, rs = np.nonzero(top_rows[:, s0:s1])
                        if ks.size:  # a few rows a tensor: each row's own best TOP_CHANNELS
                            vk = r3[ks, rs]
                            gi, gj = np.nonzero(_row_best(vk))
                            pending.append((ks[gi], vk[gi, gj], (s0 + rs[gi]) * w + gj))
                            n_pending += gi.size
                            if n_pending > 1 << 16:  # ties can make many rows candidates: merge as they come
                                merge_pending()
                        # fl(v / Σ) as llama, then p * log2(p) on the (element, tensor) matrix, whose row 0
                        # continues the chains: their last value times 1
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
                        new = _chain_products(lg, pt, ent)
                        if np.isnan(new).any():  # v / Σ underflowed to 0 somewhere: 0 * log2(0) is NaN, and
                            # 0 * log2(tiny) = -0.0 leaves the chain as it is
                            np.log2(np.maximum(pt[1:], _TINY, out=lg[1:]), out=lg[1:])
                            new = _chain_products(lg, pt, ent)
                        ent = new
                        d = np.subtract(vals, mean[:, None], out=vals)
                        if any_dead:  # the rows llama skips add nothing (their -μ would drown small moments)
                            d.reshape(K, s1 - s0, w)[dead_rows] = 0
                        if need_scale:
                            np.divide(d, scale[:, None], out=d)
                        d2 = np.multiply(d, d, out=pk)
                        m1 += _rowdot(d, ones[:L])
                        m2 += _rowdot(d, d)
                        m3 += _rowdot(d2, d)
                        m4 += _rowdot(d2, d2)
                merge_pending()
            # moments about the exact mean from those about μ (δ = exact mean - μ, tiny against σ)
            skew: dict[int, float | None] = {}
            kurt: dict[int, float | None] = {}
            for k in np.flatnonzero(ok):
                nl = int(n_live[k])
                dl, e2, e3, e4 = m1[k] / nl, m2[k] / nl, m3[k] / nl, m4[k] / nl
                c2 = e2 - dl * dl
                c3 = e3 - 3 * dl * e2 + 2 * dl**3
                c4 = e4 - 4 * dl * e3 + 6 * dl * dl * e2 - 3 * dl**4
                if not (vmax[k] > vmin[k]):
                    skew[k] = kurt[k] = None  # equal values: no shape
                elif c2 > 1e-2 * e2 and math.isfinite(c3) and math.isfinite(c4):
                    skew[k], kurt[k] = float(c3 / c2**1.5), float(c4 / (c2 * c2) - 3.0)
                else:  # values equal but for their last bits (c2 is rounding noise here): in float64
                    from imatui.stats.tensor import shape_moments

                    hit = live[k, ::q]  # the file's rows (each is q of ours)
                    v = whole(cols[k].entry).reshape(n_mat, n_in)[hit] / cnt[k, ::q][hit, None]
                    skew[k], kurt[k] = shape_moments(v)
            # llama compares the flat vectors of blk N and N-1 whenever the sizes agree: another shape
            # of the same size is compared apart, from the two whole tensors
            partner_cos: dict[int, float | None] = {}
            for k, c in enumerate(cols):
                if c.cos_partner is not None and not c.helper:
                    from imatui.stats.tensor import _cos_f32

                    partner_cos[k] = _cos_f32(whole(c.entry), whole(c.cos_partner))
    finally:
        for fd in fds.values():
            os.close(fd)

    out: list[TensorResult] = []
    for k, c in enumerate(cols):
        if c.helper:
            continue
        r = results[k]
        # CosSim from the raw inner products (llama's compute_cossim, float32)
        if c.cos_undefined:
            r.cossim = None
        elif c.cos_partner is not None:
            r.cossim = partner_cos[k]
        elif c.prev_adjacent and k > 0:
            ma = np.sqrt(mag[k], dtype=F32)
            mb = np.sqrt(mag[k - 1], dtype=F32)
            denom = F32(ma * mb)
            d_ = dp[k - 1]
            r.cossim = None if (not np.isfinite(d_) or denom == 0 or not np.isfinite(denom)) else float(F32(d_ / denom))
        if r.skipped or not ok[k]:
            out.append(r)
            continue
        nf = F32(n_live[k])
        nl = int(n_live[k])
        r.n = nl
        r.total, r.vmin, r.vmax = float(total[k]), float(vmin[k]), float(vmax[k])
        r.mean, r.dev = float(mean[k]), float(dev[k])
        r.active = float(F32(1) - F32(inactive[k]) / nf)
        entropy = F32(-ent[k]) if total[k] > 0 else F32(0.0)
        r.entropy = float(entropy)
        r.entropy_norm = float(F32(entropy / F32(math.log2(nl)))) if nl > 1 else 0.0
        r.zd = float(F32(F32(zcount[k] if dev[k] > 0 else 0) / nf))
        r.skewness, r.kurtosis = skew[k], kurt[k]
        r.dead = int(zeros[k])
        tv, ti = top_v[k, : kk[k]], top_i[k, : kk[k]]
        r.top_channels = [int(i) for i in ti]
        r.top_values = [float(v) for v in tv]
        out.append(r)
    return out


def _row_width(n_in: int, k: int, sub_elements: int) -> int:
    """The widest w dividing n_in with k * w <= sub_elements, not below MIN_WIDTH (else n_in itself)."""
    if k * n_in <= sub_elements:
        return n_in
    d = -(-k * n_in // sub_elements)  # the fewest pieces that could fit
    while n_in // d >= MIN_WIDTH:
        if n_in % d == 0:
            return n_in // d
        d += 1
    return n_in


def _padded(n: int) -> int:
    """n rounded up to 16 more than a multiple of 32 floats: a row stride of an odd multiple of 64 bytes."""
    return n + (16 - n) % 32


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


def _raw_thresholds(cnt: np.ndarray, limit: np.float32) -> np.ndarray:
    """Per (tensor, row): the largest float32 r with fl(r / count) <= limit (fl(r / c) is monotone in r),
    -inf for the rows llama skips (count inf)."""
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


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row of a with the same row of b (float32; BLAS-fast np.vecdot where numpy has it)."""
    if _VECDOT is not None:
        return _VECDOT(a, b)
    return np.einsum("ij,j->i" if b.ndim == 1 else "ij,ij->i", a, b)


_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2.0


def _z_threshold(mean: np.float32, dev: np.float32) -> np.float32:
    """The smallest float32 v with fl(fl(v - mean) / dev) > 1 (llama's one-tailed ZD test)."""
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


def _count_nonfinite(src: _Source, n: int, fds: dict[str, int]) -> int:
    bad = 0
    step = BLOCK_ELEMENTS
    tmp = np.empty(min(n, step), F32)
    for s in range(0, n, step):
        part = tmp[: min(step, n - s)]
        src.read_into(part, s, fds)
        bad += int(np.count_nonzero(~np.isfinite(part)))
    return bad


def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def plan_batches(order: list[str], entries: dict[str, Entry], template: Callable[[str], tuple[str, int]],
                 threads: int = 1) -> list[list[Column]]:
    """Group tensors by shape (in the statistics order) into batches of at most MAX_COLUMNS.

    A tensor's CosSim partner (blk N-1, same name otherwise) comes right before it in the order;
    when a batch boundary falls between them, the partner is read again as the batch's helper.
    """
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name in order:
        by_shape.setdefault(tuple(entries[name].shape), []).append(name)
    prev_of: dict[str, str | None] = {}
    last_t, last_b, last_name = None, None, None
    for name in order:
        t, b = template(name)
        prev_of[name] = last_name if (t == last_t and last_b is not None and b == last_b + 1 and b > 0) else None
        last_t, last_b, last_name = t, b, name
    batches: list[list[Column]] = []
    for shape, names in by_shape.items():
        # equal widths, and for big groups a multiple of the thread count, so the threads finish together
        nb = -(-len(names) // MAX_COLUMNS)
        if nb % threads and len(names) // (nb + threads - nb % threads) >= MIN_COLUMNS:
            nb += threads - nb % threads
        width = -(-len(names) // nb)
        for s in range(0, len(names), width):
            chunk = names[s : s + width]
            cols: list[Column] = []
            first_prev = prev_of[chunk[0]]
            if first_prev is not None and tuple(entries[first_prev].shape) == shape:
                cols.append(Column(first_prev, entries[first_prev], False, helper=True))
            for name in chunk:
                p = prev_of[name]
                adjacent = p is not None and (cols[-1].name == p if cols else False)
                other = p is not None and tuple(entries[p].shape) != shape
                undefined = other and entries[p].size != entries[name].size
                partner = entries[p] if other and not undefined else None
                cols.append(Column(name, entries[name], adjacent, cos_undefined=undefined, cos_partner=partner))
            batches.append(cols)
    return batches


def run_all(batches: list[list[Column]], path: str | None, cancelled: Callable[[], bool] | None,
            progress: Callable[[int], None] | None = None, threads: int | None = None,
            fork: bool = False) -> dict[str, TensorResult]:
    """Every batch's results by tensor name, on `threads` threads, or processes with `fork`.

    numpy releases the GIL only inside its loops; two threads spend much of their time waiting for
    it (on 2 cores, 2 threads do the work of 1.6). With `fork` (a single-threaded caller, on Linux:
    the CLI), worker processes take shares of the batches and send their results back by pipe.
    """
    if threads is None:
        threads = default_threads()
    # the biggest batches first, so the threads finish together
    batches = sorted(batches, key=lambda b: -sum(c.entry.size for c in b))
    if fork and threads > 1 and len(batches) > 1 and _CAN_FORK and threading.active_count() == 1:
        return _run_forked(batches, path, cancelled, progress, threads)
    if threads == 1 or len(batches) == 1:
        return {r.name: r for r in _run_serial(batches, path, cancelled, progress)}
    out: dict[str, TensorResult] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def is_cancelled() -> bool:
        return stop.is_set() or (cancelled is not None and cancelled())

    scratch: dict[int, dict] = {}  # per thread

    def work(cols: list[Column]) -> list[TensorResult]:
        res = run_batch(cols, path, is_cancelled, scratch.setdefault(threading.get_ident(), {}),
                        THREAD_SUB_ELEMENTS)
        if progress is not None:
            with lock:
                progress(len(res))
        return res

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imatui-stats") as pool:
        futures = [pool.submit(work, b) for b in batches]
        try:
            for f in futures:
                for r in f.result():
                    out[r.name] = r
        except BaseException:
            stop.set()
            raise
    return out


def _run_serial(batches: list[list[Column]], path: str | None, cancelled: Callable[[], bool] | None,
                progress: Callable[[int], None] | None) -> list[TensorResult]:
    """The batches one after the other, in this thread (L2-sized sub-blocks, one scratch for all)."""
    scratch: dict = {}
    res: list[TensorResult] = []
    for b in batches:
        part = run_batch(b, path, cancelled, scratch)
        if progress is not None:
            progress(len(part))
        res.extend(part)
    return res


_CAN_FORK = hasattr(os, "fork") and sys.platform.startswith("linux")  # macOS: fork is unsafe with its libraries


def _run_forked(batches: list[list[Column]], path: str | None, cancelled: Callable[[], bool] | None,
                progress: Callable[[int], None] | None, workers: int) -> dict[str, TensorResult]:
    """run_all over `workers` processes: this one takes the first share, forked children the others."""
    shares: list[list[list[Column]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for b in batches:  # biggest first, each to the least loaded share
        i = loads.index(min(loads))
        shares[i].append(b)
        loads[i] += sum(c.entry.size for c in b)

    children: list[tuple[int, int]] = []  # (pid, read end of its pipe), until reaped
    out: dict[str, TensorResult] = {}
    try:
        for share in shares[1:]:
            if not share:
                continue
            rfd, wfd = os.pipe()
            # Ctrl-C between fork and the child's own handler would unwind the child into our code
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                pid = os.fork()
            except BaseException:
                os.close(rfd)
                os.close(wfd)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                raise
            if pid == 0:  # the child: compute, send, and leave without running the parent's exit code
                code = 0
                try:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    os.close(rfd)
                    for _, other in children:
                        os.close(other)
                    try:
                        payload: tuple = ("ok", _run_serial(share, path, None, None))
                    except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
                        payload = ("error", e)
                    try:
                        data = pickle.dumps(payload)
                    except Exception:  # noqa: BLE001
                        data = pickle.dumps(("error", RuntimeError(repr(payload[1]))))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(wfd, view):]
                except BaseException:  # noqa: BLE001
                    code = 1
                finally:
                    os._exit(code)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(wfd)
            children.append((pid, rfd))
        for r in _run_serial(shares[0], path, cancelled, progress):
            out[r.name] = r
        while children:
            pid, rfd = children[0]
            chunks = []
            while chunk := os.read(rfd, 1 << 20):
                chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            os.close(rfd)
            try:
                kind, value = pickle.loads(b"".join(chunks))
            except Exception:  # noqa: BLE001 - nothing or a part: killed (out of memory?) while at work
                raise ChildProcessError(f"a statistics worker process ended without its results (exit status "
                                        f"{os.waitstatus_to_exitcode(status)})") from None
            if kind == "error":
                raise value
            if progress is not None:
                progress(len(value))
            for r in value:
                out[r.name] = r
    finally:
        for pid, rfd in children:  # on an error or Ctrl-C: stop the others
            for step in (lambda: os.close(rfd), lambda: os.kill(pid, signal.SIGKILL), lambda: os.waitpid(pid, 0)):
                try:
                    step()
                except OSError:
                    pass
    return out


__all__ = ["TensorResult", "Column", "default_threads", "plan_batches", "run_all", "run_batch"]
