"""Mixture-of-Experts data in numbers: coverage per layer, per-expert statistics, per-expert diff.

An expert tensor (`*_exps`) holds one sums2 row and one count per expert (Entry.n_mat > 1). The
counts are read eagerly by the formats layer, so everything about coverage (dead and rare experts,
the chunks still needed) is computed from counts alone and costs milliseconds even on a 1 GB file;
only the per-expert statistics and the diff read sums2.

- dead: an expert whose count is 0 (never routed a token; llama.cpp skips its row).
- rare: an expert with 0 < tokens < the threshold. The threshold is relative to the layer's mean
  tokens per expert by default (10%), or an absolute token count.
- chunks needed: at the current routing rate of each rare expert (its tokens / chunks so far), how
  many more chunks until it reaches the threshold's token count *as it is now*. A relative threshold
  grows with the data: at constant rates a rare expert stays rare relative to the mean forever, so
  the estimate holds the target fixed in tokens. Dead experts have no rate: no estimate.

Pure numpy, no Textual. The per-expert statistics reuse the stats engine's per-tensor function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imatui.errors import CorruptError, ImatrixError
from imatui.imatrix import Entry, Imatrix, split_name
from imatui.stats.tensor import TensorStats, compute_stats

RARE_FRACTION = 0.1  # default threshold: below 10% of the layer's mean tokens per expert
# the order kinds are listed in; any other tensor with several matrices is an expert tensor too
KIND_ORDER = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
SHARED_MARK = "shexp"  # DeepSeek / Qwen2-MoE shared experts: ffn_{gate,up,down}_shexp (dense)


@dataclass(frozen=True)
class RareThreshold:
    """Below how many tokens an expert counts as rare: a fraction of the layer's mean tokens per
    expert (the default), or an absolute token count when `tokens` is set."""

    fraction: float = RARE_FRACTION
    tokens: float | None = None

    def tokens_for(self, layer_mean: float) -> float:
        return float(self.tokens) if self.tokens is not None else self.fraction * layer_mean

    @property
    def label(self) -> str:
        if self.tokens is not None:
            return f"< {self.tokens:g} tokens"
        return f"< {self.fraction * 100:g}% of the layer mean"

    def scaled(self, factor: float) -> "RareThreshold":
        """The threshold times `factor` (the app's +/- keys)."""
        if self.tokens is not None:
            return RareThreshold(self.fraction, max(1.0, round(self.tokens * factor)))
        return RareThreshold(min(1.0, max(1e-4, self.fraction * factor)), None)

    @classmethod
    def parse(cls, text: str) -> "RareThreshold":
        """"10%" (of the layer mean) or "100" (tokens)."""
        s = text.strip()
        try:
            if s.endswith("%"):
                value = float(s[:-1]) / 100.0
                if not 0.0 < value <= 1.0:
                    raise ValueError
                return cls(fraction=value)
            value = float(s)
            if not value > 0 or not math.isfinite(value):
                raise ValueError
            return cls(tokens=value)
        except ValueError:
            raise ImatrixError(f"rare threshold {text!r}: give a percentage of the layer mean "
                               "(10%, at most 100%) or a token count (100)") from None


def is_expert_tensor(entry: Entry) -> bool:
    return entry.n_mat > 1 and entry.layer is not None


def _kind_key(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def expert_tensors(imatrix: Imatrix) -> dict[int, list[str]]:
    """Per layer, the names of its expert tensors (gate, up, down, then any other)."""
    out: dict[int, list[str]] = {}
    for name, entry in imatrix.entries.items():
        if is_expert_tensor(entry):
            out.setdefault(int(entry.layer), []).append(name)
    for names in out.values():
        names.sort(key=lambda n: _kind_key(split_name(n)[1]))
    return dict(sorted(out.items()))


def shared_tensors(imatrix: Imatrix) -> dict[int, list[str]]:
    """Per layer, its shared-expert tensors (dense: one matrix, every token)."""
    out: dict[int, list[str]] = {}
    for name, entry in imatrix.entries.items():
        layer, kind = split_name(name)
        if layer is not None and SHARED_MARK in kind and entry.n_mat == 1:
            out.setdefault(layer, []).append(name)
    for names in out.values():
        names.sort(key=lambda n: _kind_key(split_name(n)[1].replace(SHARED_MARK, "exps")))
    return dict(sorted(out.items()))


def layer_counts(imatrix: Imatrix, names: list[str]) -> tuple[np.ndarray, bool]:
    """Tokens per expert of one layer from its expert tensors: the smallest count over the kinds
    (they agree in llama.cpp's files, gate/up/down see the same routed tokens), and whether they agree."""
    entries = [imatrix.entries[n] for n in names]
    n_mat = max(e.n_mat for e in entries)
    rows = [np.asarray(e.counts, dtype=np.float64) for e in entries if e.n_mat == n_mat]
    stacked = np.vstack(rows)
    agree = bool(np.all(stacked == stacked[0]))
    return stacked.min(axis=0), agree


def chunks_to_reach(tokens: np.ndarray, target: float, chunk_count: int) -> np.ndarray:
    """More chunks each expert needs to reach `target` tokens at its rate so far (tokens / chunks):
    0 when it is there already, inf for an expert with no tokens (no rate), nan without chunk count."""
    tokens = np.asarray(tokens, dtype=np.float64)
    if chunk_count <= 0:
        return np.full(tokens.shape, np.nan)
    out = np.zeros(tokens.shape)
    short = tokens < target
    with np.errstate(divide="ignore"):
        out[short] = np.ceil(chunk_count * (target - tokens[short]) / tokens[short])
    return out


@dataclass
class LayerCoverage:
    layer: int
    n_experts: int
    tensors: list[str]  # the layer's expert tensors (gate, up, down)
    shared: list[str]  # its shared-expert tensors, if any
    counts: list[int]  # tokens per expert
    total: int  # tokens over all experts (each token counts once per expert it was routed to)
    mean: float  # mean tokens per expert
    threshold: float  # rare below this many tokens
    dead: list[int]  # experts with no tokens
    rare: list[int]  # experts with 0 < tokens < threshold
    min_count: int  # smallest count (0 when an expert is dead)
    min_live: int | None  # smallest count of an expert with tokens
    chunks_needed: int | None  # more chunks for the slowest rare expert of the layer (None: no rare)
    slowest: int | None  # that expert
    kinds_agree: bool = True  # gate/up/down counts identical (False: the smallest is used)

    @property
    def shares(self) -> list[float]:
        """Each expert's share of the layer's routed tokens."""
        return [c / self.total if self.total else 0.0 for c in self.counts]

    def status(self, expert: int) -> str:
        """"dead", "rare" or "ok"."""
        c = self.counts[expert]
        return "dead" if c <= 0 else "rare" if c < self.threshold else "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Coverage:
    """How well the experts of a MoE imatrix are covered: per layer and for the file."""

    file: str
    chunk_count: int
    threshold: RareThreshold
    layers: list[LayerCoverage]
    chunks_needed: int | None = None  # the slowest rare expert's more chunks (None: no rare expert)
    slowest: tuple[int, int] | None = None  # (layer, expert) of that expert

    @property
    def is_moe(self) -> bool:
        return bool(self.layers)

    @property
    def n_experts(self) -> int:
        return sum(lay.n_experts for lay in self.layers)

    @property
    def dead(self) -> int:
        return sum(len(lay.dead) for lay in self.layers)

    @property
    def rare(self) -> int:
        return sum(len(lay.rare) for lay in self.layers)

    def layer(self, layer: int) -> LayerCoverage | None:
        for lay in self.layers:
            if lay.layer == layer:
                return lay
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "chunk_count": self.chunk_count,
            "threshold": {"fraction": None if self.threshold.tokens is not None else self.threshold.fraction,
                          "tokens": self.threshold.tokens, "label": self.threshold.label},
            "moe_layers": len(self.layers),
            "experts": self.n_experts,
            "dead": self.dead,
            "rare": self.rare,
            "chunks_needed": self.chunks_needed,
            "slowest": None if self.slowest is None else {"layer": self.slowest[0], "expert": self.slowest[1]},
            "layers": [lay.to_dict() for lay in self.layers],
        }


def coverage(imatrix: Imatrix, threshold: RareThreshold | None = None) -> Coverage:
    """Dead and rare experts per layer, and the chunks still needed, from the counts alone."""
    threshold = threshold or RareThreshold()
    shared = shared_tensors(imatrix)
    layers: list[LayerCoverage] = []
    for layer, names in expert_tensors(imatrix).items():
        counts, agree = layer_counts(imatrix, names)
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise CorruptError(f"blk.{layer}: expert counts are not finite non-negative numbers", imatrix.path)
        total = float(counts.sum())
        mean = total / counts.size
        target = threshold.tokens_for(mean)
        dead = np.flatnonzero(counts <= 0)
        rare = np.flatnonzero((counts > 0) & (counts < target))
        needed = chunks_to_reach(counts[rare], target, imatrix.chunk_count) if rare.size else np.array([])
        chunks_needed = slowest = None
        if rare.size and np.all(np.isfinite(needed)):
            i = int(np.argmax(needed))
            chunks_needed, slowest = int(needed[i]), int(rare[i])
        live = counts[counts > 0]
        layers.append(LayerCoverage(
            layer=layer, n_experts=int(counts.size), tensors=list(names), shared=shared.get(layer, []),
            counts=[int(c) for c in counts], total=int(total), mean=mean, threshold=target,
            dead=[int(e) for e in dead], rare=[int(e) for e in rare], min_count=int(counts.min()),
            min_live=int(live.min()) if live.size else None, chunks_needed=chunks_needed, slowest=slowest,
            kinds_agree=agree,
        ))
    cov = Coverage(file="" if imatrix.path is None else str(imatrix.path), chunk_count=int(imatrix.chunk_count),
                   threshold=threshold, layers=layers)
    worst = [lay for lay in layers if lay.chunks_needed is not None]
    if worst:
        w = max(worst, key=lambda lay: (lay.chunks_needed, -lay.layer))
        cov.chunks_needed, cov.slowest = w.chunks_needed, (w.layer, int(w.slowest))
    return cov


# -- per-expert statistics ----------------------------------------------------------------------

@dataclass
class ExpertRow:
    """One expert of one tensor: its tokens, its share of the tensor's routed tokens, its status and
    the same statistics as a dense tensor (None for a dead expert: no values to compute them on)."""

    expert: int
    tokens: int
    share: float
    status: str  # "dead", "rare" or "ok"
    stats: TensorStats | None

    def to_dict(self) -> dict[str, Any]:
        d = {"expert": self.expert, "tokens": self.tokens, "share": self.share, "status": self.status}
        if self.stats is not None:
            s = self.stats
            d.update(sum=s.sum, min=s.min, max=s.max, mean=s.mean, std=s.std, active=s.active, n=s.n,
                     entropy=s.entropy, entropy_norm=s.entropy_norm, zd=s.zd, skewness=s.skewness,
                     kurtosis=s.kurtosis, dead_channels=s.dead, top_channels=s.top_channels,
                     top_values=s.top_values)
        return d


def _experts_stats(entry: Entry, experts: list[int], sums2: np.ndarray | None = None,
                   path: str | None = None, cancelled: Callable[[], bool] | None = None
                   ) -> dict[int, TensorStats | None]:
    """The statistics of some experts' rows, each as a dense tensor of n_in channels, by the stats
    engine itself (compute_stats over a small in-memory imatrix of one entry per expert). CosSim does
    not apply (the experts of two blocks are not the same expert) and is None."""
    if sums2 is None:
        sums2 = entry.sums2
    sums2 = np.asarray(sums2)
    counts = np.asarray(entry.counts, dtype=np.float32)
    sums = entry.sums
    row_sums = None if sums is None else np.asarray(sums)
    entries: dict[str, Entry] = {}
    for e in experts:
        if counts[e] <= 0:
            continue
        name = f"{entry.name}:expert{e}"  # its own template: no pairing with another tensor
        entries[name] = Entry(name, (1, entry.n_in), counts[e: e + 1].copy(), sums2[e: e + 1],
                              None if row_sums is None else row_sums[e: e + 1])
    out: dict[int, TensorStats | None] = {e: None for e in experts}
    if not entries:
        return out
    report = compute_stats(Imatrix(entries=entries, path=None if path is None else Path(path)),
                           cancelled=cancelled)
    for t in report.tensors:
        e = int(t.name.rsplit(":expert", 1)[1])
        t.name, t.cossim = entry.name, None
        out[e] = t
    return out


def expert_stats(entry: Entry, expert: int, sums2: np.ndarray | None = None,
                 path: str | None = None) -> TensorStats | None:
    """The statistics of one expert's row (as for a dense tensor); None when it has no tokens."""
    return _experts_stats(entry, [expert], sums2, path)[expert]


def expert_table(entry: Entry, threshold: RareThreshold | None = None, path: str | None = None,
                 cancelled: Callable[[], bool] | None = None) -> list[ExpertRow]:
    """One row per expert of `entry`, in expert order (sort with sort_experts)."""
    threshold = threshold or RareThreshold()
    counts = np.asarray(entry.counts, dtype=np.float64)
    total = float(counts.sum())
    target = threshold.tokens_for(total / counts.size if counts.size else 0.0)
    stats = _experts_stats(entry, list(range(entry.n_mat)), None, path, cancelled)
    rows = []
    for e in range(entry.n_mat):
        c = float(counts[e])
        status = "dead" if c <= 0 else "rare" if c < target else "ok"
        rows.append(ExpertRow(expert=e, tokens=int(c), share=c / total if total else 0.0, status=status,
                              stats=stats[e]))
    return rows


def _stat(name: str) -> Callable[[ExpertRow], Any]:
    return lambda r: None if r.stats is None else getattr(r.stats, name)


EXPERT_SORT_KEYS: dict[str, tuple[Callable[[ExpertRow], Any], bool]] = {
    "expert": (lambda r: r.expert, False),
    "tokens": (lambda r: r.tokens, False),  # fewest first: the experts to worry about
    "share": (lambda r: r.share, False),
    **{k: (_stat(k), True) for k in ("sum", "min", "max", "mean", "std", "active", "entropy",
                                     "entropy_norm", "zd", "skewness", "kurtosis")},
    "dead": (_stat("dead"), True),
}


def sort_experts(rows: list[ExpertRow], column: str = "expert", reverse: bool = False) -> list[ExpertRow]:
    """Rows by a column in its natural direction (reverse flips it); dead experts (no value) last."""
    if column not in EXPERT_SORT_KEYS:
        raise ImatrixError(f"unknown expert column {column!r}; one of: {', '.join(EXPERT_SORT_KEYS)}")
    key, descending = EXPERT_SORT_KEYS[column]
    present = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    present.sort(key=key, reverse=descending != reverse)  # stable: ties stay in expert order
    return present + missing


# -- per-expert diff ----------------------------------------------------------------------------

@dataclass
class ExpertDiff:
    expert: int
    tokens_a: int
    tokens_b: int
    share_a: float  # share of the tensor's routed tokens in A
    share_b: float
    cossim: float | None  # cosine of the expert's sums2 rows (None: dead in A or B)

    @property
    def share_delta(self) -> float:
        return self.share_b - self.share_a

    def to_dict(self) -> dict[str, Any]:  # by hand: asdict's deep copies take seconds for 44,544 experts
        return {"expert": self.expert, "tokens_a": self.tokens_a, "tokens_b": self.tokens_b,
                "share_a": float(self.share_a), "share_b": float(self.share_b), "cossim": self.cossim,
                "share_delta": float(self.share_delta)}


@dataclass
class TensorExpertDiff:
    name: str
    layer: int | None
    kind: str
    experts: list[ExpertDiff]
    dead_a: list[int]  # experts with no tokens in A
    dead_b: list[int]
    min_cossim: float | None  # the least similar expert live in both
    min_expert: int | None
    mean_cossim: float | None
    max_share_shift: float  # largest |share_b - share_a|
    max_shift_expert: int

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["experts"] = [x.to_dict() for x in self.experts]
        d["dead_a"], d["dead_b"] = list(self.dead_a), list(self.dead_b)
        return d


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair in float64 (scale-free, so sums2 and sums2/count give the same);
    nan where either row is all zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = np.einsum("ij,ij->i", a, b)
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / (na * nb)
    return np.clip(cos, -1.0, 1.0)


def diff_tensor_experts(ea: Entry, eb: Entry, cos: np.ndarray | None = None) -> TensorExpertDiff:
    """Expert by expert: the cosine of each expert's channels in A and in B, and its token shares.

    `cos`: each expert's cosine when the diff engine computed them already (DiffReport.expert_cos,
    which checked the values); else they are computed here from the whole tensors."""
    if ea.shape != eb.shape:
        raise ImatrixError(f"{ea.name}: shapes differ ({ea.shape} and {eb.shape})")
    ca = np.asarray(ea.counts, dtype=np.float64)
    cb = np.asarray(eb.counts, dtype=np.float64)
    if cos is None:
        sa, sb = np.asarray(ea.sums2), np.asarray(eb.sums2)
        for side, sums2, counts in (("A", sa, ca), ("B", sb, cb)):
            # a NaN would only make its expert's cosine undefined: say so instead of hiding the expert
            if not (np.all(np.isfinite(counts)) and np.isfinite(float(np.sum(sums2, dtype=np.float64)))):
                raise CorruptError(f"tensor {ea.name} has non-finite values (NaN or Inf) in {side}")
        cos = _row_cosines(sa, sb)
    both = (ca > 0) & (cb > 0) & np.isfinite(cos)
    ta, tb = float(ca.sum()), float(cb.sum())
    share_a = (ca / ta if ta else np.zeros_like(ca)).tolist()  # plain floats: 44,544 experts in a DeepSeek diff
    share_b = (cb / tb if tb else np.zeros_like(cb)).tolist()
    experts = [ExpertDiff(expert=e, tokens_a=int(na), tokens_b=int(nb), share_a=sa, share_b=sb,
                          cossim=c if ok else None)
               for e, (na, nb, sa, sb, c, ok) in enumerate(zip(ca.tolist(), cb.tolist(), share_a, share_b,
                                                              cos.tolist(), both.tolist()))]
    live = [x for x in experts if x.cossim is not None]
    low = min(live, key=lambda x: (x.cossim, x.expert)) if live else None
    shift = max(experts, key=lambda x: (abs(x.share_delta), -x.expert))
    layer, kind = split_name(ea.name)
    return TensorExpertDiff(
        name=ea.name, layer=layer, kind=kind, experts=experts,
        dead_a=[int(e) for e in np.flatnonzero(ca <= 0)], dead_b=[int(e) for e in np.flatnonzero(cb <= 0)],
        min_cossim=None if low is None else low.cossim, min_expert=None if low is None else low.expert,
        mean_cossim=float(np.mean([x.cossim for x in live])) if live else None,
        max_share_shift=abs(shift.share_delta), max_shift_expert=shift.expert,
    )


def diff_experts(a: Imatrix, b: Imatrix, cancelled: Callable[[], bool] | None = None,
                 expert_cos: dict[str, np.ndarray] | None = None) -> list[TensorExpertDiff]:
    """Per expert tensor present in both files with the same shape, expert by expert; in name order.
    Empty when neither file has expert tensors (or a legacy .dat lost them).

    `expert_cos`: DiffReport.expert_cos of compute_diff(a, b), whose engine computed every expert's
    cosine in its passes (then nothing is read here); without it each tensor is read whole."""
    out = []
    for name in sorted(set(a.entries) & set(b.entries)):
        ea, eb = a.entries[name], b.entries[name]
        if not (is_expert_tensor(ea) and is_expert_tensor(eb)) or ea.shape != eb.shape:
            continue
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        out.append(diff_tensor_experts(ea, eb, None if expert_cos is None else expert_cos[name]))
    return out


# -- convergence: which experts gain tokens slowest ------------------------------------------------

def routing_counts(imatrix: Imatrix) -> dict[int, np.ndarray]:
    """Per MoE layer, tokens per expert (a few KB even for DeepSeek: kept per checkpoint)."""
    return {layer: layer_counts(imatrix, names)[0] for layer, names in expert_tensors(imatrix).items()}


@dataclass
class SlowExpert:
    layer: int
    expert: int
    gained: int  # tokens routed to it between the two checkpoints
    tokens: int  # its tokens at the newer checkpoint


def slowest_experts(prev: dict[int, np.ndarray], new: dict[int, np.ndarray], n: int = 5) -> list[SlowExpert]:
    """The experts that gained the fewest tokens between two checkpoints (then the fewest in all)."""
    found: list[SlowExpert] = []
    for layer, counts in new.items():
        old = prev.get(layer)
        if old is None or old.shape != counts.shape:
            continue
        gained = counts - old
        order = np.lexsort((counts, gained))[:n]
        found += [SlowExpert(layer, int(e), int(gained[e]), int(counts[e])) for e in order]
    found.sort(key=lambda s: (s.gained, s.tokens, s.layer, s.expert))
    return found[:n]

