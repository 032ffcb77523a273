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

The engine of `imatui stats` (imatui.stats.engine) computes it: tensors of one shape in batches,
read block by block from both files side by side (two 1 GB files are never in RAM), Σ with llama's
float32 chains, the comparison in float64; in worker processes for the CLI (`fork`).
"""

from __future__ import annotations

import functools
import math
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

from imatui.errors import CorruptError
from imatui.imatrix import Entry, Imatrix, split_name
from imatui.stats import checks, compare_np, engine
from imatui.stats.batched import MeansT, sum_v
from imatui.stats.engine import F32, BlockReader, Layout, scratch_array


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

    @classmethod
    def blank(cls, name: str, ea: Entry | None, eb: Entry | None) -> TensorDiff:
        """The row before any comparison: name, layer, kind and shapes; every number None."""
        layer, kind = split_name(name)
        return cls(name=name, layer=layer, kind=kind, shape_a=None if ea is None else tuple(ea.shape),
                   shape_b=None if eb is None else tuple(eb.shape), sum_a=None, sum_b=None, sum_ratio=None,
                   cossim=None, js=None, rank_a=None, rank_b=None, rank_shift=None, top_channel=None,
                   top_value_a=None, top_value_b=None, top_share_delta=None, comparable=False, reason=None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # flat values: no deep copy needed
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
    # tensors of several matrices (experts) compared: each matrix's cosine, nan where it has none
    # (not live in both files); imatui.stats.experts.diff_experts turns it into the per-expert diff
    expert_cos: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

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


# --- the engine's job: one batch of tensors of one shape, from A and B side by side -------------------

@dataclass
class DiffColumn:
    """A tensor of a diff batch: in A and B (same shape), or one side only (its Σ alone)."""

    name: str
    a: Entry | None
    b: Entry | None

    @property
    def size(self) -> int:  # elements read, for balancing the workers
        return sum(e.size for e in (self.a, self.b) if e is not None)


@dataclass
class ColumnDiff:
    """What a batch gives for one DiffColumn (key: (sides, name)); compute_diff makes the TensorDiff."""

    name: tuple[str, str]
    sum_a: float | None = None
    sum_b: float | None = None
    error_a: str | None = None
    error_b: str | None = None
    reason: str | None = None  # why not comparable, when both sides are there
    cossim: float | None = None
    js: float | None = None
    top_channel: int | None = None
    top_value_a: float | None = None
    top_value_b: float | None = None
    top_share_delta: float | None = None
    experts_compared: int | None = None
    experts_skipped: int | None = None
    expert_cos: np.ndarray | None = None  # tensors of several matrices: each matrix's cosine (nan: none)



def diff_batch(cols: list[DiffColumn], path: str | None, cancelled: Callable[[], bool] | None,
               scratch: dict | None = None, sub_elements: int | None = None,
               compiled: bool = False) -> list[ColumnDiff]:
    """Σ of each side (llama's, exact) with the checks of `imatui stats`; for tensors in both files the
    cosine, the Jensen–Shannon divergence and the channel whose share moved most (engine.run_all's job).

    Pass 1 reads both files' blocks side by side: Σ (float32 chains), the smallest mean (the
    negative check) and the float64 row sums that give Σa and Σb over the matrices live in both.
    Pass 2 (pairs only) reads them again for p = a / Σa and q = b / Σb, in float64: in numba's compiled
    loops with `compiled` (imatui.stats.compare), else in numpy (imatui.stats.compare_np).
    """
    if scratch is None:
        scratch = {}
    sub = engine.SUB_ELEMENTS if sub_elements is None else sub_elements
    sides = [s for s in ("a", "b") if getattr(cols[0], s) is not None]
    key = "".join(sides)
    out = [ColumnDiff((key, c.name)) for c in cols]
    with np.errstate(all="ignore"), ExitStack() as stack:
        lays, readers = {}, {}
        for s in sides:
            entries = [getattr(c, s) for c in cols]
            # each side's read blocks half as long as a statistics pass's: the two together fill the
            # same cache (two worker processes with 16 MB of blocks each left the L3 of 32 MB no room)
            lays[s] = Layout.of(entries, sub, block_elements=engine.BLOCK_ELEMENTS // len(sides))
            readers[s] = stack.enter_context(BlockReader(lays[s], entries, cancelled, scratch, "raw" + s))
        pair = len(sides) == 2
        both = lays["a"].live & lays["b"].live if pair else None  # (K, rows): matrices live in both
        sums = _pass1(lays, readers, both, scratch)
        for s in sides:
            total, vmin, _ = sums[s]
            lay = lays[s]
            for k, c in enumerate(cols):
                # NaN or Inf anywhere (skipped rows too: raw / inf stays NaN) leaves Σ non-finite
                bad = 0 if np.isfinite(total[k]) else readers[s].count_nonfinite(k)
                if lay.n_live[k] == 0:  # no live matrix: no Σ
                    setattr(out[k], "error_" + s, checks.nonfinite_message(c.name, bad) if bad else None)
                    continue
                err = checks.value_error(c.name, bad, vmin[k], np.inf, total[k])
                if err is not None and not bad and vmin[k] >= 0:  # an overflow: its message names the max
                    err = checks.overflow_message(c.name, _vmax(readers[s], lay, k))
                setattr(out[k], "error_" + s, err)
                setattr(out[k], "sum_" + s, float(total[k]))
        if not pair or any(r.error_a or r.error_b for r in out):
            return out
        copies = _copies(lays, readers, sums)
        if not copies:
            _pass2(lays, readers, both, sums, out, scratch, compiled)
            return out
        # pass 2 over the tensors that are not byte-for-byte copies of an earlier one in both files
        keep = [k for k in range(len(cols)) if k not in copies]
        sub_lays = {s: lays[s].subset(keep) for s in "ab"}
        sub_readers = {s: stack.enter_context(BlockReader(sub_lays[s], [getattr(cols[k], s) for k in keep],
                                                          cancelled, scratch, "raw" + s)) for s in "ab"}
        sub_sums = {s: tuple(x[keep] for x in sums[s]) for s in "ab"}
        _pass2(sub_lays, sub_readers, both[keep], sub_sums, [out[k] for k in keep], scratch, compiled)
        for k, first in copies.items():
            _copy_comparison(out[first], out[k])
    return out


def _copies(lays: dict[str, Layout], readers: dict[str, BlockReader], sums: dict) -> dict[int, int]:
    """{k: first}: tensors of the batch whose bytes equal an earlier one's in A and in B.

    llama-imatrix's files repeat many tensors byte for byte (the matmuls of one input: attn_q/k/v,
    ffn_gate/up, ffn_gate_exps/up_exps): a third of the elements of SmolLM2's and DeepSeek's. Their
    comparison is the same, so it is computed once. Candidates have equal counts, float64 row sums
    and Σ on both sides (pass 1); the bytes themselves decide."""
    seen: dict[bytes, int] = {}
    copies: dict[int, int] = {}
    for k in range(lays["a"].K):
        key = b"".join(np.ascontiguousarray(x[k]).tobytes() for s in "ab"
                       for x in (lays[s].counts, sums[s][2], sums[s][0]))
        first = seen.setdefault(key, k)
        if first != k and all(readers[s].same_bytes(first, k) for s in "ab"):
            copies[k] = first
    return copies


def _copy_comparison(src: ColumnDiff, dst: ColumnDiff) -> None:
    for f in ("reason", "cossim", "js", "top_channel", "top_value_a", "top_value_b", "top_share_delta",
              "experts_compared", "experts_skipped", "expert_cos"):
        setattr(dst, f, getattr(src, f))


def _vmax(reader: BlockReader, lay: Layout, k: int) -> float:
    live = lay.live[k, :: lay.q]
    v = reader.whole(k).reshape(lay.n_mat, lay.n_in)[live] / lay.cnt[k, :: lay.q][live, None]
    return float(v.max())


def _pass1(lays: dict[str, Layout], readers: dict[str, BlockReader], both: np.ndarray | None,
           scratch: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per side: Σ (float32, llama's chain over its own live matrices), the smallest mean, and (pairs)
    the float64 sum of each row's raw values."""
    sides = list(lays)
    lay0 = lays[sides[0]]
    K, w = lay0.K, lay0.w
    s_max = lay0.sub_elements
    tbuf = scratch_array(scratch, "t", (s_max + 1, K), F32)
    vbuf = scratch_array(scratch, "v", (s_max, K), F32)
    means = {s: MeansT(lays[s]) for s in sides}
    total = {s: np.zeros(K, F32) for s in sides}
    rawmin = {s: np.empty((K, lay0.rows), F32) for s in sides}
    row_sums = {s: np.zeros((K, lay0.rows)) if both is not None else None for s in sides}
    for blocks in zip(*(readers[s].blocks() for s in sides)):
        for s, (r0, r1, raw) in zip(sides, blocks):
            for s0, s1, part in readers[s].subs(r0, r1, raw):
                _, vt = means[s](part, s0, s1, tbuf, vbuf)
                total[s] = sum_v(vt, total[s])
                part.reshape(K, s1 - s0, w).min(axis=2, out=rawmin[s][:, s0:s1])  # v = raw / c: monotone
                if both is not None:
                    np.einsum("kmw->km", part.reshape(K, s1 - s0, w), dtype=np.float64,
                              out=row_sums[s][:, s0:s1])
    for s in sides[1:]:  # zip stops at the first side's end: the others' final checks
        readers[s].check_stamps()
    # each side's smallest v over its live rows (the negative check)
    vmin = {s: np.where(lays[s].live, rawmin[s] / lays[s].cnt, np.inf).min(axis=1) for s in sides}
    return {s: (total[s], vmin[s], row_sums[s]) for s in sides}


def _pass2(lays: dict[str, Layout], readers: dict[str, BlockReader], both: np.ndarray,
           sums: dict, out: list[ColumnDiff], scratch: dict, compiled: bool) -> None:
    """Cosine, Jensen–Shannon and the top channel of p = a / Σa and q = b / Σb over the matrices live
    in both (Σa, Σb over those too), in float64.

    JS = ½ Σ [p ln(p/m) + q ln(q/m)] with m = (p + q) / 2, each channel's term (p + q) g(d) with
    d = (q - p) / (p + q): a polynomial in d² where |d| ≤ 0.5, the logarithms above (imatui.stats.compare,
    compiled loops over each read block, or imatui.stats.compare_np).
    """
    la, lb = lays["a"], lays["b"]
    K, w, q_ = la.K, la.w, la.q
    # Σa, Σb over the rows live in both (the float64 row sums divided by their counts)
    cnt64 = {s: np.repeat(lays[s].counts, q_, axis=1) for s in "ab"}
    tot = {s: np.where(both, sums[s][2] / np.where(both, cnt64[s], 1), 0.0).sum(axis=1) for s in "ab"}
    todo = np.zeros(K, bool)
    for k, r in enumerate(out):
        ca, cb = la.counts[k] > 0, lb.counts[k] > 0
        if not ca.any():
            r.reason = "zero counts in A (no tokens reached it)"
        elif not cb.any():
            r.reason = "zero counts in B (no tokens reached it)"
        elif not (ca & cb).any():
            r.reason = "no matrix (expert) has tokens in both A and B"
        else:
            live = int(np.count_nonzero(ca & cb))
            r.experts_compared, r.experts_skipped = live, la.n_mat - live
            if tot["a"][k] == 0.0 or tot["b"][k] == 0.0:
                r.reason = f"all channels are zero in {'A' if tot['a'][k] == 0.0 else 'B'}"
            else:
                todo[k] = True
    if not todo.any():
        return
    # each row's factor: 1 / (count * Σ) where live in both, else 0 (its p and q are 0: they add nothing)
    # (a multiplication: a third cheaper than dividing float32 by float64, and within an ulp of it)
    scale = {s: 1.0 / np.where(both & todo[:, None], cnt64[s] * np.where(todo, tot[s], 1.0)[:, None], np.inf)
             for s in "ab"}
    js2 = np.zeros(K)  # Σ (p + q) g(d): twice the divergence, in nats
    # the cosine's sums row by row (a row is a piece of one matrix): per tensor, and per matrix (expert)
    pq, pp, qq = (np.zeros((K, la.rows)) for _ in range(3))
    best = np.full(K, -1.0)  # the largest |q - p| so far: the first row live in both takes it
    best_i = np.zeros(K, np.int64)
    best_p, best_q = np.zeros(K), np.zeros(K)
    ra, rb = readers["a"], readers["b"]
    if compiled:
        from imatui.stats import compare

        pf, qf = (scratch_array(scratch, nm, (1, w), np.float64)[0] for nm in ("pf", "qf"))
        for (r0, r1, _), _ in zip(ra.blocks(), rb.blocks()):
            compare.compare_block(ra.padded_buf, rb.padded_buf, (r1 - r0) * w, w, r0, scale["a"], scale["b"],
                                  js2, pq, pp, qq, best, best_i, best_p, best_q, pf, qf)
    else:
        for (r0, r1, raw_a), (_, _, raw_b) in zip(ra.blocks(), rb.blocks()):
            compare_np.compare_block(raw_a, raw_b, r0, r1, w, scale["a"], scale["b"], both, js2, pq, pp, qq,
                                     best, best_i, best_p, best_q, scratch)
    ra.check_stamps()
    rb.check_stamps()
    if la.n_mat > 1:  # each matrix's cosine: the sums of its q rows (nan where a side is all zero)
        per = [x.reshape(K, la.n_mat, q_).sum(axis=2) for x in (pq, pp, qq)]
        cos = np.clip(per[0] / np.sqrt(per[1] * per[2]), -1.0, 1.0)
        for k in np.flatnonzero(todo):
            out[k].expert_cos = cos[k]
    pq, pp, qq = (x.sum(axis=1) for x in (pq, pp, qq))
    for k in np.flatnonzero(todo):
        r = out[k]
        dot, na, nb = float(pq[k]), float(pp[k]), float(qq[k])
        r.cossim = None if na == 0.0 or nb == 0.0 else max(-1.0, min(1.0, dot / math.sqrt(na * nb)))
        r.js = min(1.0, max(0.0, 0.5 * float(js2[k]) / math.log(2.0)))  # nats to bits
        r.top_channel = int(best_i[k])  # flat: expert * n_in + channel
        r.top_value_a, r.top_value_b = float(best_p[k] * tot["a"][k]), float(best_q[k] * tot["b"][k])
        r.top_share_delta = float(best_q[k] - best_p[k])


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
                 cancelled: Callable[[], bool] | None = None, fork: bool = False) -> DiffReport:
    """Every tensor of A and B compared, in bounded memory (the engine's blocks).

    progress(done, total) is called as tensors are done; cancelled() is polled between blocks and
    raises InterruptedError when it returns True (the TUI's worker cancels this way). `fork`: compute
    in worker processes (only a single-threaded caller such as the CLI may ask).
    """
    pa = None if a.path is None else str(a.path)
    pb = None if b.path is None else str(b.path)
    names = sorted(set(a.entries) | set(b.entries))
    threads = engine.default_threads()
    batches = _plan(a, b, names, threads)
    compiled = worth_compiling(compared_pairs(a, b))
    if compiled:
        load_compiled_loops()  # before the workers are forked: they share them
    res = engine.run_all(functools.partial(diff_batch, compiled=compiled), batches, None, cancelled,
                         _ticker(progress, len(names)), threads, fork)
    rows = [_row(name, a.entries.get(name), b.entries.get(name), res, pa, pb) for name in names]

    rank_a = _ranks({r.name: r.sum_a for r in rows})
    rank_b = _ranks({r.name: r.sum_b for r in rows})
    for r in rows:
        r.rank_a = rank_a.get(r.name)
        r.rank_b = rank_b.get(r.name)
        if r.rank_a is not None and r.rank_b is not None:
            r.rank_shift = r.rank_b - r.rank_a

    layers, by_kind = _layer_similarity(rows, a, b)
    expert_cos = {}
    for r in rows:
        pair = res.get(("ab", r.name))
        if pair is not None and a.entries[r.name].n_mat > 1:
            cos = pair.expert_cos
            expert_cos[r.name] = np.full(a.entries[r.name].n_mat, np.nan) if cos is None else cos
    return DiffReport(
        a=pa or "A", b=pb or "B", header=_header(a, b), tensors=rows,
        only_a=[n for n in names if n not in b.entries],
        only_b=[n for n in names if n not in a.entries],
        layers=layers, by_kind=by_kind, expert_cos=expert_cos,
    )


# channel pairs from which the compare pass runs in numba's compiled loops: below, numba's start in a
# process (~0.7 s: import, and its cached loops loaded) costs more than they save. Measured with the
# first 10, 20 and 32 layers of benchmarks/bench_diff.py's calibration pair (30, 72 and 123 M pairs, 2
# cores, `imatui diff --format json`, 4-5 interleaved runs): compiled / numpy 1.29x, 1.14x, 0.88x; the
# whole pair (250 M) 0.76x. A dense model's imatrix has well under 1 M pairs.
COMPILED_MIN_PAIRS = 100_000_000


def worth_compiling(pairs: int) -> bool:
    """Whether a diff of this many channel pairs (values in both files) takes the compiled loops."""
    return pairs >= COMPILED_MIN_PAIRS


def load_compiled_loops() -> None:
    """Import numba and load (or, the first time after an install, compile) imatui.stats.compare's loops
    in this process: ~0.7 s, ~3 s compiling; nothing the second time. Imported here, not with the app."""
    from imatui.stats import compare

    compare.load()


def compiled_loops_loaded() -> bool:
    """Whether load_compiled_loops() ran in this process (without importing numba to find out)."""
    compare = sys.modules.get("imatui.stats.compare")
    return compare is not None and compare.loaded()


def compared_pairs(a: Imatrix, b: Imatrix) -> int:
    """The channel pairs a diff of A and B compares: the values of the tensors in both, of one shape."""
    return sum(ea.size for name, ea in a.entries.items()
               if (eb := b.entries.get(name)) is not None and ea.shape == eb.shape)


def _plan(a: Imatrix, b: Imatrix, names: list[str], threads: int) -> list[list[DiffColumn]]:
    """Batches of one shape: tensors in both files (same shape) together; the others one side alone."""
    pairs, only = [], {"a": [], "b": []}
    for name in names:
        ea, eb = a.entries.get(name), b.entries.get(name)
        if ea is not None and eb is not None and ea.shape == eb.shape:
            pairs.append(name)
        else:
            for side, e in (("a", ea), ("b", eb)):
                if e is not None:
                    only[side].append(name)
    batches = [[DiffColumn(n, a.entries[n], b.entries[n]) for n in chunk]
               for chunk in engine.group_by_shape(pairs, lambda n: a.entries[n].shape, threads)]
    for side, im in (("a", a), ("b", b)):
        for chunk in engine.group_by_shape(only[side], lambda n: im.entries[n].shape, threads):
            batches.append([DiffColumn(n, a.entries[n] if side == "a" else None,
                                       b.entries[n] if side == "b" else None) for n in chunk])
    return batches


def _ticker(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    done = [0]

    def tick(n: int) -> None:  # a batch's n tensors done: told one by one, as callers count tensors
        new = min(total, done[0] + n)  # (a tensor of two shapes is done twice, once a side)
        for i in range(done[0] + 1, new + 1):
            progress(i, total)
        done[0] = new

    return tick


def _row(name: str, ea: Entry | None, eb: Entry | None, res: dict[tuple[str, str], ColumnDiff],
         pa: str | None, pb: str | None) -> TensorDiff:
    row = TensorDiff.blank(name, ea, eb)
    pair = res.get(("ab", name))
    ca = pair if pair is not None else res.get(("a", name))
    cb = pair if pair is not None else res.get(("b", name))
    for c, path in ((ca, pa), (cb, pb)):  # A first: the first tensor in name order, A before B
        err = None if c is None else (c.error_a if c is ca else c.error_b)
        if err:
            raise CorruptError(err, path)
    row.sum_a = None if ca is None else ca.sum_a
    row.sum_b = None if cb is None else cb.sum_b
    if row.sum_a is not None and row.sum_b is not None and row.sum_a != 0:
        row.sum_ratio = row.sum_b / row.sum_a
    if ea is None:
        row.reason = "missing in A"
    elif eb is None:
        row.reason = "missing in B"
    elif pair is None:
        row.reason = f"shape mismatch: {ea.n_mat}x{ea.n_in} in A, {eb.n_mat}x{eb.n_in} in B"
    else:
        row.reason = pair.reason
        row.experts_compared, row.experts_skipped = pair.experts_compared, pair.experts_skipped
        if pair.reason is None:
            row.cossim, row.js, row.top_channel = pair.cossim, pair.js, pair.top_channel
            row.top_value_a, row.top_value_b = pair.top_value_a, pair.top_value_b
            row.top_share_delta = pair.top_share_delta
            row.comparable = True
    return row


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
