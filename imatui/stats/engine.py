"""The batched engine: many tensors of one shape read side by side, block by block, in bounded memory.

Three computations run on it: llama's per-tensor statistics (imatui.stats.batched), the diff of two
files (imatui.stats.diff) and the per-channel means of the convergence series
(imatui.stats.convergence). This module has what they share: the batch layout, the block reader,
float32 chains in llama's order, the planning of batches and the runner (threads or worker processes).

**The batch layout.** A batch is K tensors ("columns") of one shape (n_mat, n_in). The engine only
ever sees each tensor as a flat run of n = n_mat * n_in elements, cut into `rows` rows of w elements:
w divides n_in (q = n_in // w pieces make one matrix row, and share that matrix's count), and is
chosen so that K * w, one row of the batch, fits a sub-block even for 7168-wide experts.

    buf   (K, rows_per_block * w)   a read block: row k holds tensor k's elements e0..e1
    part  (K, sub_rows * w)         a sub-block of it, computed on while it sits in L2 cache
    cnt   (K, rows) float32         each row's count, inf for the rows of matrices llama skips
    live  (K, rows) bool            the rows whose matrix has a count > 0

Read blocks are ~8 MB (few syscalls, straight into `buf` by preadv); sub-blocks 2^18 floats, so that
numpy's sweeps stay in a core's L2 cache. A block's sub-block transposed, an (element, tensor)
matrix, is what the float32 chains run on.

**Float32 chains.** llama-imatrix sums in float32, one element after the other (std::accumulate with
0.0f): a chain of dependent additions. numpy's cumsum follows it exactly but at ~3 ns an element.
Summing over axis 0 of a C-ordered (rows, columns) matrix also adds row after row, so each column is
still an exact element-by-element float32 chain, yet numpy vectorizes across the columns: every
chain of every tensor in the batch advances with one vectorized call. Adding +0.0 leaves a float32
sum unchanged, which lets the rows of experts never hit (count 0, skipped by llama) stay in place as
zeros. einsum("ij->j") and einsum("ij,ij->j") add in row order too (checked at import), one sweep
where a multiply and a sum would take two.

**Running.** numpy releases the GIL only inside its loops, so threads wait for each other between
calls (two threads on two cores do the work of ~1.6). The CLI, a single-threaded caller, forks
worker processes that take shares of the batches and send their results back by pipe (run_all's
`fork`); the app, which has threads of its own, uses a thread pool with larger sub-blocks (fewer
calls, less waiting).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from imatui import forked
from imatui.errors import TruncatedError
from imatui.imatrix import Entry

F32 = np.float32
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
_HAS_PREADV = hasattr(os, "preadv")


@dataclass
class Column:
    name: str
    entry: Entry
    prev_adjacent: bool  # the same tensor of block N-1 is the column before (or the batch's helper)
    helper: bool = False  # only read for the next column's CosSim
    cos_undefined: bool = False  # block N-1 has this tensor in another size: no CosSim (llama reads past it)
    cos_partner: Entry | None = None  # block N-1's tensor, another shape of the same size: CosSim apart


# --- the layout --------------------------------------------------------------------------------------

@dataclass
class Layout:
    """How a batch of K tensors of shape (n_mat, n_in) is cut into rows, sub-blocks and read blocks."""

    K: int
    n_mat: int
    n_in: int
    w: int  # elements of a row (divides n_in)
    q: int  # rows per matrix row: n_in // w
    rows: int  # rows of each tensor: n_mat * q
    sub_rows: int  # rows of a sub-block
    rows_per_block: int  # rows of a read block (a multiple of sub_rows)
    counts: np.ndarray  # (K, n_mat) float64, the file's counts
    cnt: np.ndarray  # (K, rows) float32: the count of each row, inf for the rows llama skips
    live: np.ndarray  # (K, rows) bool
    n_live: np.ndarray  # (K,) elements in live rows

    @property
    def n(self) -> int:
        return self.n_mat * self.n_in

    @property
    def block_elements(self) -> int:
        return self.rows_per_block * self.w

    def subset(self, keep: list[int]) -> Layout:
        """The same cut (w, rows, blocks) for the columns `keep` alone."""
        return dataclasses.replace(self, K=len(keep), counts=self.counts[keep], cnt=self.cnt[keep],
                                   live=self.live[keep], n_live=self.n_live[keep])

    @property
    def sub_elements(self) -> int:
        return self.sub_rows * self.w

    @classmethod
    def of(cls, entries: list[Entry], sub_elements: int, counts: np.ndarray | None = None,
           block_elements: int | None = None) -> Layout:
        """The layout of tensors of one shape; `counts` (K, n_mat) in place of their own (the diff's
        rows live in both files); `block_elements`: of a read block, BLOCK_ELEMENTS unless given."""
        if block_elements is None:
            block_elements = BLOCK_ELEMENTS
        n_mat, n_in = entries[0].shape
        K = len(entries)
        w = _row_width(n_in, K, sub_elements)
        q = n_in // w
        rows = n_mat * q
        sub_rows = max(1, min(rows, sub_elements // max(1, K * w)))
        rows_per_block = max(sub_rows, min(rows, block_elements // max(1, K * w)) // sub_rows * sub_rows)
        if counts is None:
            counts = np.stack([np.asarray(e.counts, dtype=np.float64).reshape(-1) for e in entries])
        live = counts > 0
        n_live = live.sum(axis=1) * n_in
        # llama divides a float by the int64 count: the count becomes a float32
        cnt = np.repeat(np.where(live, counts, np.inf).astype(F32), q, axis=1)  # x / inf = 0 for skipped rows
        return cls(K, n_mat, n_in, w, q, rows, sub_rows, rows_per_block, counts, cnt,
                   np.repeat(live, q, axis=1), n_live)


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


def padded(n: int) -> int:
    """n rounded up to 16 more than a multiple of 32 floats: a row stride of an odd multiple of 64 bytes.

    (tensor, element) matrices that get transposed have such a row stride: with a multiple of 4096
    (7168-wide experts, two rows) every row maps to the same cache sets and the transposing copy runs
    2.5x slower."""
    return n + (16 - n) % 32


def scratch_array(cache: dict, name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A C-ordered array from `cache` (one thread's), kept for its next batch: no fresh pages to fault in."""
    n = shape[0] * shape[1]
    key = (name, np.dtype(dtype).str)
    arr = cache.get(key)
    if arr is None or arr.size < n:
        arr = cache[key] = np.empty(max(n, 1), dtype)
    return arr[:n].reshape(shape)


def flat2(flat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return flat[: rows * cols].reshape(rows, cols)


# --- reading ---------------------------------------------------------------------------------------

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


class BlockReader:
    """The read blocks of a batch's tensors, into one buffer kept in `scratch` under `tag`.

    Use as a context manager (it closes the files it opened). Every pass over the blocks ends with a
    check that no file changed meanwhile (llama-imatrix rewrites in place): a rewritten file must not
    give numbers.
    """

    def __init__(self, lay: Layout, entries: list[Entry], cancelled: Callable[[], bool] | None,
                 scratch: dict, tag: str = "raw"):
        self.lay = lay
        self.entries = entries
        self.cancelled = cancelled
        self.sources = [_Source(e) for e in entries]
        self.fds: dict[str, int] = {}
        l_max = lay.block_elements
        # the C-ordered matrix (rows of padded(l_max)) that holds the blocks, and the block's columns of it
        self.padded_buf = scratch_array(scratch, tag, (lay.K, padded(l_max)), F32)
        self.buf = self.padded_buf[:, :l_max]
        self._views = [memoryview(self.buf[k]).cast("B") for k in range(lay.K)] if _HAS_PREADV else None

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(r0, r1, raw): read blocks of rows r0..r1, raw (K, (r1 - r0) * w) a view of the buffer."""
        lay = self.lay
        w = lay.w
        for r0 in range(0, lay.rows, lay.rows_per_block):
            if self.cancelled is not None and self.cancelled():
                raise InterruptedError("statistics cancelled")
            r1 = min(lay.rows, r0 + lay.rows_per_block)
            e0, e1 = r0 * w, r1 * w
            raw = self.buf[:, : e1 - e0]
            if e1 - e0 == self.buf.shape[1]:
                views = self._views
            else:
                views = [memoryview(raw[k]).cast("B") for k in range(lay.K)] if _HAS_PREADV else None
            nbytes = 4 * (e1 - e0)
            for k, src in enumerate(self.sources):
                if views is not None and src.array is None:  # one syscall straight into the block
                    fd, off = src.fd_offset(self.fds)
                    if os.preadv(fd, [views[k]], off + 4 * e0) != nbytes:
                        raise TruncatedError("the file ends inside its tensor data", src.slice.path)
                else:
                    src.read_into(raw[k], e0, self.fds)
            yield r0, r1, raw
        self.check_stamps()

    def check_stamps(self) -> None:
        """TruncatedError if a file read from changed since it was opened."""
        for src in self.sources:
            if src.slice is not None and src.slice.path in self.fds:
                check_stamp(self.fds[src.slice.path], src.slice)

    def subs(self, r0: int, r1: int, raw: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """(s0, s1, part): the sub-blocks of a read block, part (K, (s1 - s0) * w) a view of raw."""
        w, sub_rows = self.lay.w, self.lay.sub_rows
        for s0 in range(r0, r1, sub_rows):
            s1 = min(r1, s0 + sub_rows)
            yield s0, s1, raw[:, (s0 - r0) * w : (s1 - r0) * w]

    def whole(self, k: int) -> np.ndarray:
        """Tensor k's flat sums2, read as the blocks are (stamp-checked), for the rare cases done apart."""
        return self.read_entry(self.entries[k])

    def read_entry(self, entry: Entry) -> np.ndarray:
        src = _Source(entry)
        arr = np.empty(entry.size, F32)
        src.read_into(arr, 0, self.fds)
        if src.slice is not None:
            check_stamp(self.fds[src.slice.path], src.slice)
        return arr

    def same_bytes(self, k1: int, k2: int) -> bool:
        """Whether tensors k1 and k2 hold the same bytes (read in steps, stamp-checked)."""
        s1, s2, n = self.sources[k1], self.sources[k2], self.lay.n
        step = BLOCK_ELEMENTS
        t1, t2 = np.empty(min(n, step), F32), np.empty(min(n, step), F32)
        for s in range(0, n, step):
            a, b = t1[: min(step, n - s)], t2[: min(step, n - s)]
            s1.read_into(a, s, self.fds)
            s2.read_into(b, s, self.fds)
            if not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
                return False
        self.check_stamps()
        return True

    def count_nonfinite(self, k: int) -> int:
        """NaN and Inf among all of tensor k's values (the rows llama skips included)."""
        src, n = self.sources[k], self.lay.n
        bad = 0
        step = BLOCK_ELEMENTS
        tmp = np.empty(min(n, step), F32)
        for s in range(0, n, step):
            part = tmp[: min(step, n - s)]
            src.read_into(part, s, self.fds)
            bad += int(np.count_nonzero(~np.isfinite(part)))
        return bad


# --- float32 chains, in llama's order ------------------------------------------------------------

def chain(block: np.ndarray, acc: np.ndarray) -> np.ndarray:
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


def chain_products(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Continue float32 chains with the products fl(a[i, k] * b[i, k]), i >= 1 (row 0 is ours to use).

    einsum("ij,ij->j") rounds each product and adds in row order (checked below), one sweep instead
    of a multiply and a sum; its sum starts at 0, so row 0 holds acc * 1.
    """
    a[0] = acc
    b[0] = 1
    if _EINSUM2_IN_ORDER and a.shape[1] >= 8:  # (narrower: einsum's loop for few columns may reorder)
        return np.einsum("ij,ij->j", a, b)
    np.multiply(a, b, out=a)
    return chain(a[1:], acc)


def row_counts(mask: np.ndarray) -> np.ndarray:
    """The Trues of each row of a C-contiguous (K, L) boolean matrix.

    Eight booleans to a 64-bit word: summing up to 255 words keeps every byte's sum in its byte, so
    numpy adds 8 at a time (4x faster than a uint8 sum along rows).
    """
    k, n = mask.shape
    if n % 8 or not mask.flags.c_contiguous:
        return np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.int64)
    part = np.add.reduceat(mask.view(np.uint64), np.arange(0, n // 8, 255), axis=1)
    return part.view(np.uint8).reshape(k, -1).sum(axis=1, dtype=np.int64)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row (last axis) of a with the same row of b, or with the vector b (BLAS-fast np.vecdot
    where numpy has it)."""
    if _VECDOT is not None:
        return _VECDOT(a, b)
    return np.einsum("...j,...j->...", a, b)


_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2.0


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


# --- planning and running --------------------------------------------------------------------------

def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def group_by_shape(names: list[str], shape_of: Callable[[str], tuple[int, int]],
                   threads: int = 1) -> list[list[str]]:
    """Names of one shape, in their order, in chunks of at most MAX_COLUMNS of equal widths (for big
    groups a multiple of the thread count, so the threads finish together)."""
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name in names:
        by_shape.setdefault(tuple(shape_of(name)), []).append(name)
    chunks: list[list[str]] = []
    for group in by_shape.values():
        nb = -(-len(group) // MAX_COLUMNS)
        if nb % threads and len(group) // (nb + threads - nb % threads) >= MIN_COLUMNS:
            nb += threads - nb % threads
        width = -(-len(group) // nb)
        chunks.extend(group[s : s + width] for s in range(0, len(group), width))
    return chunks


def plan_batches(order: list[str], entries: dict[str, Entry], template: Callable[[str], tuple[str, int]],
                 threads: int = 1) -> list[list[Column]]:
    """Group tensors by shape (in the statistics order) into batches of at most MAX_COLUMNS.

    A tensor's CosSim partner (blk N-1, same name otherwise) comes right before it in the order;
    when a batch boundary falls between them, the partner is read again as the batch's helper.
    """
    prev_of: dict[str, str | None] = {}
    last_t, last_b, last_name = None, None, None
    for name in order:
        t, b = template(name)
        prev_of[name] = last_name if (t == last_t and last_b is not None and b == last_b + 1 and b > 0) else None
        last_t, last_b, last_name = t, b, name
    batches: list[list[Column]] = []
    for chunk in group_by_shape(order, lambda nm: entries[nm].shape, threads):
        shape = tuple(entries[chunk[0]].shape)
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


# a batch's computation: (batch, path, cancelled, scratch, sub_elements) -> results, each with a .name
Job = Callable[..., list]


def batch_size(batch: Any) -> int:
    """Elements a batch reads: the sum over its columns (any object with .entry, or .size)."""
    return sum(c.entry.size if hasattr(c, "entry") else c.size for c in batch)


def run_all(job: Job, batches: list, path: str | None, cancelled: Callable[[], bool] | None,
            progress: Callable[[int], None] | None = None, threads: int | None = None,
            fork: bool = False) -> dict[str, Any]:
    """Every batch's results by name, on `threads` threads, or processes with `fork`.

    `job(batch, path, cancelled, scratch, sub_elements)` computes one batch and returns its results
    (each with a .name); `progress(n)` is told of each batch's n results. numpy releases the GIL only inside its loops; two
    threads spend much of their time waiting for it (on 2 cores, 2 threads do the work of 1.6). With
    `fork` (a single-threaded caller, on Linux: the CLI), worker processes take shares of the batches
    and send their results back by pipe.
    """
    if threads is None:
        threads = default_threads()
    # the biggest batches first, so the threads finish together
    batches = sorted(batches, key=lambda b: -batch_size(b))
    if fork and threads > 1 and len(batches) > 1 and _CAN_FORK and threading.active_count() == 1:
        return _run_forked(batches, path, cancelled, progress, threads, job)
    if threads == 1 or len(batches) == 1:
        return {r.name: r for r in _run_serial(batches, path, cancelled, progress, job)}
    out: dict[str, Any] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def is_cancelled() -> bool:
        return stop.is_set() or (cancelled is not None and cancelled())

    scratch: dict[int, dict] = {}  # per thread

    def work(batch: list) -> list:
        res = job(batch, path, is_cancelled, scratch.setdefault(threading.get_ident(), {}), THREAD_SUB_ELEMENTS)
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


def _run_serial(batches: list, path: str | None, cancelled: Callable[[], bool] | None,
                progress: Callable[[int], None] | None, job: Job) -> list:
    """The batches one after the other, in this thread (L2-sized sub-blocks, one scratch for all)."""
    scratch: dict = {}
    res: list = []
    for b in batches:
        part = job(b, path, cancelled, scratch, SUB_ELEMENTS)
        if progress is not None:
            progress(len(part))
        res.extend(part)
    return res


_CAN_FORK = forked.CAN_FORK


def _run_forked(batches: list, path: str | None, cancelled: Callable[[], bool] | None,
                progress: Callable[[int], None] | None, workers: int, job: Job) -> dict[str, Any]:
    """run_all over `workers` processes: this one takes the first share, forked children the others."""
    shares: list[list] = [[] for _ in range(workers)]
    loads = [0] * workers
    for b in batches:  # biggest first, each to the least loaded share
        i = loads.index(min(loads))
        shares[i].append(b)
        loads[i] += batch_size(b)

    children: list[forked.Child] = []  # until reaped
    out: dict[str, Any] = {}
    try:
        for share in shares[1:]:
            if share:
                children.append(forked.start(lambda share=share: _run_serial(share, path, None, None, job),
                                             close=[c.fd for c in children]))
        for r in _run_serial(shares[0], path, cancelled, progress, job):
            out[r.name] = r
        while children:
            sent, status = forked.result(children[0])
            children.pop(0)
            if sent is None:
                raise ChildProcessError(f"a statistics worker process ended without its results (exit status "
                                        f"{status})")
            kind, value = sent
            if kind == "error":
                raise value
            if progress is not None:
                progress(len(value))
            for r in value:
                out[r.name] = r
    finally:
        for child in children:  # on an error or Ctrl-C: stop the others
            forked.stop(child)
    return out
