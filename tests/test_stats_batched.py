"""The batched statistics engine gives exactly what the plain per-tensor implementation gives.

tests/stats_reference.py's _tensor_stats is the straightforward transcription of llama.cpp's loops (one
tensor, numpy cumsum for its float32 sums); imatui.stats.batched computes many tensors side by side
in blocks. They must agree to the bit on every llama column, whatever the batch and block sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import count_forks
from imatui.formats import load, save
from imatui.imatrix import Entry, Imatrix
from imatui.stats import batched, engine
from imatui.stats.tensor import _template, compute_stats
from tests.stats_reference import _Prev, _tensor_stats

LLAMA_FIELDS = ["sum", "min", "max", "mean", "std", "active", "n", "entropy", "entropy_norm", "zd", "cossim",
                "dead", "tokens", "skipped_matrices", "expert_counts", "experts_unused"]


def synthetic() -> Imatrix:
    rng = np.random.default_rng(42)
    entries = {}

    def add(name, n_mat, n_in, counts=None):
        counts = np.asarray(counts if counts is not None else rng.integers(1, 900, n_mat), dtype=np.float64)
        sums2 = rng.lognormal(0, 2, (n_mat, n_in)).astype(np.float32) * counts[:, None].astype(np.float32)
        sums2[counts == 0] = 0
        sums2[:, rng.integers(0, n_in, 2)] = 0  # dead channels
        sums2[:, :3] *= 1e-9  # inactive ones
        entries[name] = Entry.from_arrays(name, sums2, counts)

    for blk in range(13):
        add(f"blk.{blk}.attn_q.weight", 1, 40)
        add(f"blk.{blk}.attn_k.weight", 1, 24 if blk != 6 else 40)  # blk 6 differs: no CosSim for 6, 7
        counts = rng.integers(0, 50, 6)
        counts[blk % 6] = 0
        add(f"blk.{blk}.ffn_up_exps.weight", 6, 16, counts)
        if blk < 3:
            add(f"blk.{blk}.ffn_down.weight", 1, 64)  # 3 of a shape: the cumsum path
    add("blk.13.ffn_up_exps.weight", 6, 16, np.zeros(6))  # never hit: skipped, still CosSim's partner
    add("blk.14.ffn_up_exps.weight", 6, 16)
    add("output.weight", 1, 40)
    return Imatrix(entries=dict(sorted(entries.items())), datasets=["s"], chunk_count=1, chunk_size=512)


def reference(im: Imatrix) -> dict:
    """Per tensor with _tensor_stats, visiting the tensors in the statistics order."""
    out = {}
    prev_t, prev_b, prev_s = None, None, None
    for name in sorted(im.entries, key=_template):
        e = im.entries[name]
        t, b = _template(name)
        prev = prev_s if (t == prev_t and prev_b is not None and b == prev_b + 1) else None
        with np.errstate(all="ignore"):
            ts, _, state = _tensor_stats(name, e.sums2, e.counts, None, prev, None)
        if ts is not None:
            out[name] = ts
        prev_t, prev_b, prev_s = t, b, _Prev(raw=state.raw, act=None)
    return out


@pytest.mark.parametrize("columns,block,sub,width", [(48, 1 << 19, 1 << 18, 256), (2, 1 << 19, 1 << 18, 256),
                                                   (5, 64, 32, 4), (9, 16, 16, 2), (2, 1, 1, 1), (13, 4096, 100, 3)])
def test_batched_equals_reference(monkeypatch, columns, block, sub, width):
    """Batches, read blocks and sub-blocks of many sizes; rows cut into pieces of at least `width`."""
    monkeypatch.setattr(engine, "MAX_COLUMNS", columns)
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(engine, "SUB_ELEMENTS", sub)
    monkeypatch.setattr(engine, "MIN_WIDTH", width)
    im = synthetic()
    ref = reference(im)
    report = compute_stats(im)
    assert {t.name for t in report.tensors} == set(ref)
    assert [s.name for s in report.skipped] == ["blk.13.ffn_up_exps.weight"]
    assert report.tensor("blk.7.attn_k.weight").cossim is None  # blk 6 has another shape
    # the partner (blk 13) was skipped and is all zeros: llama would divide by 0, we print nothing
    assert report.tensor("blk.14.ffn_up_exps.weight").cossim is None
    assert report.tensor("blk.12.ffn_up_exps.weight").cossim is not None
    for t in report.tensors:
        r = ref[t.name]
        for f in LLAMA_FIELDS:
            assert getattr(t, f) == getattr(r, f), (t.name, f, getattr(t, f), getattr(r, f))
        assert t.skewness == pytest.approx(r.skewness, rel=1e-6)
        assert t.kurtosis == pytest.approx(r.kurtosis, rel=1e-6)
        assert t.top_values == pytest.approx(r.top_values, rel=0)
        assert sorted(t.top_channels) == sorted(r.top_channels)


def _random_imatrix(rng: np.random.Generator) -> Imatrix:
    """Tensors of 1-3 shapes over up to 30 blocks (one in ten with another block's shape), counts with zeros
    or all equal, skipped rows zeroed or not, dead and inactive channels, and ties."""
    shapes = [(int(rng.integers(1, 9)), int(rng.choice([1, 3, 8, 16, 24, 40, 96, 257, 512])))
              for _ in range(int(rng.integers(1, 4)))]
    entries = {}
    for blk in range(int(rng.integers(1, 30))):
        for j, (n_mat, n_in) in enumerate(shapes):
            if rng.random() < 0.1:
                n_mat, n_in = shapes[(j + 1) % len(shapes)]
            counts = rng.integers(0, 60, n_mat).astype(np.float64)
            if rng.random() < 0.3:
                counts[:] = rng.integers(1, 60)
            scale = rng.uniform(0.1, 100)
            sums2 = (rng.lognormal(0, rng.uniform(0.2, 3), (n_mat, n_in)) * scale).astype(np.float32)
            sums2 *= counts[:, None].astype(np.float32)
            if rng.random() < 0.7:
                sums2[counts == 0] = 0
            if rng.random() < 0.5:
                sums2[:, rng.integers(0, n_in, 2)] = 0
            if rng.random() < 0.5:
                sums2[:, : max(1, n_in // 10)] *= 1e-9
            if rng.random() < 0.2:
                sums2[:] = np.float32(rng.integers(1, 4))
            name = f"blk.{blk}.t{j}.weight"
            entries[name] = Entry.from_arrays(name, sums2, counts)
    return Imatrix(entries=dict(sorted(entries.items())), datasets=["s"], chunk_count=1, chunk_size=512)


@pytest.mark.parametrize("seed", [43, 267, 506, 1, 2, 3, 4, 5])
def test_random_batches_equal_reference(monkeypatch, seed):
    """Random files and random batch, block and sub-block sizes: every llama column to the bit."""
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(engine, "MAX_COLUMNS", int(rng.integers(1, 70)))
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", int(rng.choice([1, 7, 64, 1000, 4096, 1 << 15, 1 << 19])))
    monkeypatch.setattr(engine, "SUB_ELEMENTS", int(rng.choice([1, 5, 50, 300, 2048, 1 << 14, 1 << 18])))
    monkeypatch.setattr(engine, "THREAD_SUB_ELEMENTS", int(rng.choice([1, 64, 4096, 1 << 19])))
    monkeypatch.setattr(engine, "MIN_WIDTH", int(rng.choice([1, 2, 8, 64, 256])))
    im = _random_imatrix(rng)
    ref = reference(im)
    report = compute_stats(im)
    assert {t.name for t in report.tensors} == set(ref)
    for t in report.tensors:
        r = ref[t.name]
        for f in LLAMA_FIELDS:
            assert getattr(t, f) == getattr(r, f), (t.name, f, getattr(t, f), getattr(r, f))
        assert (t.skewness is None) == (r.skewness is None)
        if t.skewness is not None:
            assert abs(t.skewness - r.skewness) <= 1e-5 * max(1.0, abs(r.skewness)), t.name
            assert abs(t.kurtosis - r.kurtosis) <= 1e-4 * max(1.0, abs(r.kurtosis)), t.name
        assert t.top_values == pytest.approx(r.top_values, rel=0)


def test_threads_do_not_change_anything(monkeypatch):
    monkeypatch.setattr(engine, "MAX_COLUMNS", 4)
    im = synthetic()
    order = sorted(im.entries, key=_template)
    one = batched.run_all(engine.plan_batches(order, im.entries, _template), None, None, threads=1)
    two = batched.run_all(engine.plan_batches(order, im.entries, _template), None, None, threads=3)
    assert one == two


def test_without_einsum_shortcuts(monkeypatch):
    """The plain multiply-and-add paths (a numpy whose einsum reorders or fuses) give the same numbers."""
    monkeypatch.setattr(engine, "_EINSUM_IN_ORDER", False)
    monkeypatch.setattr(engine, "_EINSUM2_IN_ORDER", False)
    monkeypatch.setattr(engine, "_VECDOT", None)
    monkeypatch.setattr(engine, "SUB_ELEMENTS", 200)
    monkeypatch.setattr(engine, "MIN_WIDTH", 4)
    im = synthetic()
    ref = reference(im)
    for t in compute_stats(im).tensors:
        for f in LLAMA_FIELDS:
            assert getattr(t, f) == getattr(ref[t.name], f), (t.name, f)


@pytest.mark.parametrize("sub,width", [(1 << 18, 256), (60, 4)])
def test_top_channels_ties_go_to_the_lower_index(monkeypatch, sub, width):
    monkeypatch.setattr(engine, "SUB_ELEMENTS", sub)
    monkeypatch.setattr(engine, "MIN_WIDTH", width)
    flat = np.full((4, 40), 2.0, np.float32)
    peaks = np.ones((4, 40), np.float32)
    peaks[[0, 1, 1, 3, 3, 3, 3, 3, 3, 3], [39, 5, 30, 0, 1, 2, 3, 4, 5, 6]] = 9.0  # ten equal peaks
    counts = np.array([1.0, 1.0, 0.0, 1.0])  # row 2 is never hit: its zeros stay out
    im = Imatrix(entries={"blk.0.ffn_up_exps.weight": Entry.from_arrays("blk.0.ffn_up_exps.weight", flat, counts),
                          "blk.1.ffn_up_exps.weight": Entry.from_arrays("blk.1.ffn_up_exps.weight", peaks, counts)},
                 datasets=["s"], chunk_count=1, chunk_size=512)
    report = compute_stats(im)
    assert report.tensor("blk.0.ffn_up_exps.weight").top_channels == list(range(8))
    assert report.tensor("blk.0.ffn_up_exps.weight").top_values == [2.0] * 8
    # flat indices expert * 40 + channel, in index order among equals: 39, 45, 70, 120, 121, 122, 123, 124
    assert report.tensor("blk.1.ffn_up_exps.weight").top_channels == [39, 45, 70, 120, 121, 122, 123, 124]


def test_moments_about_the_exact_mean():
    """Skewness and kurtosis about the exact mean, although llama's float32 μ of 2^19 values is off by ~1e-5
    (here 1e-5 / σ shifts skewness by ~2e-4 and kurtosis by ~1e-4)."""
    rng = np.random.default_rng(11)
    sums2 = rng.lognormal(0, 0.25, (8, 1 << 16)).astype(np.float32)
    e = Entry.from_arrays("blk.0.ffn_down.weight", sums2, np.ones(8))
    im = Imatrix(entries={e.name: e}, datasets=["s"], chunk_count=1, chunk_size=512)
    t = compute_stats(im).tensor(e.name)
    v = sums2.astype(np.float64).ravel()
    assert abs(t.mean - v.mean()) / v.mean() > 5e-6  # llama's float32 chain: the centre to correct
    d = v - v.mean()
    assert t.skewness == pytest.approx((d**3).mean() / (d**2).mean() ** 1.5, rel=1e-6)
    # float32 dot products of d^4 (in blocks of ~2^18) leave a few 1e-6 on the kurtosis
    assert t.kurtosis == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3, rel=2e-5)


def test_cossim_with_a_partner_of_another_shape_and_the_same_size():
    """llama compares the flat vectors of blk N and blk N-1 whenever their sizes agree."""
    rng = np.random.default_rng(4)
    shapes = {0: (2, 24), 1: (6, 8), 2: (6, 8), 3: (4, 8)}
    entries = {}
    for blk, (n_mat, n_in) in shapes.items():
        name = f"blk.{blk}.ffn_up_exps.weight"
        counts = rng.integers(1, 30, n_mat).astype(np.float64)
        entries[name] = Entry.from_arrays(name, rng.random((n_mat, n_in)).astype(np.float32) * 9, counts)
    im = Imatrix(entries=entries, datasets=["s"], chunk_count=1, chunk_size=512)
    ref, report = reference(im), compute_stats(im)
    for blk in (1, 2):  # another shape of the same size, then the same shape
        name = f"blk.{blk}.ffn_up_exps.weight"
        assert report.tensor(name).cossim == ref[name].cossim and ref[name].cossim is not None
    assert report.tensor("blk.3.ffn_up_exps.weight").cossim is None  # 32 values after 48: none


def test_moments_ignore_the_rows_llama_skips():
    """Two experts hit (values 1/58 and 1/55: skewness 0, kurtosis -2) and one never hit: its zeros stand
    at 38 σ from the mean and must not reach the float32 sums of d^3 and d^4."""
    sums2 = np.ones((3, 257), np.float32)
    counts = np.array([55.0, 0.0, 58.0])
    e = Entry.from_arrays("blk.0.ffn_up_exps.weight", sums2, counts)
    t = compute_stats(Imatrix(entries={e.name: e}, datasets=["s"], chunk_count=1, chunk_size=512)).tensor(e.name)
    assert t.n == 514
    assert abs(t.skewness) < 1e-6  # it was -0.00106
    assert t.kurtosis == pytest.approx(-2.0, abs=1e-6)


def test_moments_of_values_equal_but_for_their_last_bits():
    """1.1 and the next few floats: llama's float32 μ (a chain of 2^19 additions) is far further from the
    mean than σ is wide, so the moments are taken in float64 from the values (as the reference takes them)."""
    rng = np.random.default_rng(2)
    base = np.float32(1.1)
    sums2 = (base + rng.choice([0, 1, 1, 3], (4, 1 << 17)).astype(np.float32) * np.spacing(base)).astype(np.float32)
    e = Entry.from_arrays("blk.0.ffn_down.weight", sums2, np.ones(4))
    im = Imatrix(entries={e.name: e}, datasets=["s"], chunk_count=1, chunk_size=512)
    t, r = compute_stats(im).tensor(e.name), reference(im)[e.name]
    v = sums2.astype(np.float64)
    assert abs(t.mean - v.mean()) > 100 * v.std()  # the centre is off by a hundred σ
    assert r.skewness == pytest.approx(0.652, abs=2e-3)  # values 0, 1, 1, 3 (in ulps)
    assert (t.skewness, t.kurtosis) == (r.skewness, r.kurtosis)


def test_row_best_keeps_eight_a_row_ties_to_the_lower_index():
    v = np.array([[5, 1, 5, 5, 2, 5, 5, 5, 5, 5, 5, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], np.float32)
    best = batched._row_best(v)
    assert best.sum(axis=1).tolist() == [8, 8]
    assert np.flatnonzero(best[0]).tolist() == [0, 2, 3, 5, 6, 7, 8, 9]
    assert np.flatnonzero(best[1]).tolist() == list(range(4, 12))


def test_moments_undefined_for_equal_values():
    sums2 = np.full((2, 64), 3.0, np.float32)
    e = Entry.from_arrays("blk.0.ffn_down.weight", sums2, np.array([3.0, 3.0]))
    t = compute_stats(Imatrix(entries={e.name: e}, datasets=["s"], chunk_count=1, chunk_size=512)).tensor(e.name)
    assert t.min == t.max == 1.0 and t.skewness is None and t.kurtosis is None


def test_read_blocks_larger_than_sub_blocks(monkeypatch):
    """Four rows read at a time, computed on one at a time; every row has values <= 1e-5, so % active is
    counted over whole read blocks (and dead channels: exact zeros)."""
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", 4 * 4 * 64)
    monkeypatch.setattr(engine, "SUB_ELEMENTS", 4 * 64)
    monkeypatch.setattr(engine, "MIN_WIDTH", 64)
    rng = np.random.default_rng(8)
    entries = {}
    for blk in range(4):
        counts = rng.integers(1, 50, 8).astype(np.float64)
        sums2 = rng.lognormal(0, 2, (8, 64)).astype(np.float32) * counts[:, None].astype(np.float32)
        sums2[:, :10] *= 1e-9
        sums2[:, 20] = 0
        name = f"blk.{blk}.ffn_up_exps.weight"
        entries[name] = Entry.from_arrays(name, sums2, counts)
    im = Imatrix(entries=entries, datasets=["s"], chunk_count=1, chunk_size=512)
    ref = reference(im)
    for t in compute_stats(im).tensors:
        assert t.active == ref[t.name].active and t.dead == ref[t.name].dead == 8
        for f in LLAMA_FIELDS:
            assert getattr(t, f) == getattr(ref[t.name], f), (t.name, f)


def test_row_counts_packs_eight_booleans_a_word():
    rng = np.random.default_rng(5)
    for n in (8, 2040, 2048, 4096, 8 * 255 * 3 + 8, 13):
        m = rng.random((7, n)) < 0.97  # long runs of Trues: every byte's sum near its 255 limit
        assert engine.row_counts(m).tolist() == m.sum(axis=1).tolist()


def test_row_width_divides_and_fits(monkeypatch):
    monkeypatch.setattr(engine, "MIN_WIDTH", 256)
    assert engine._row_width(7168, 58, 1 << 18) == 3584  # 58 x 3584 = 207,872 floats: an L2-sized sub-block
    assert engine._row_width(2048, 58, 1 << 18) == 2048  # a whole row fits
    assert engine._row_width(7919, 58, 1 << 18) == 7919  # prime: no piece of >= 256, whole rows
    assert engine._row_width(16384, 58, 1 << 17) == 2048


def test_raw_thresholds_match_the_division():
    """athr[k, r] is the largest raw with fl(raw / count) <= 1e-5: one float32 step up is above it."""
    rng = np.random.default_rng(3)
    cnt = np.concatenate([rng.integers(1, 10**6, 500), [np.inf, 3, 7, 512]]).astype(np.float32).reshape(2, -1)
    thr = batched._raw_thresholds(cnt, batched.ACTIVE_THRESHOLD)
    live = np.isfinite(cnt)
    assert np.all(thr[~live] == -np.inf)
    t, c = thr[live], cnt[live]
    assert np.all(t / c <= batched.ACTIVE_THRESHOLD)
    assert np.all(np.nextafter(t, np.float32(np.inf)) / c > batched.ACTIVE_THRESHOLD)


def test_worker_processes_give_the_same_numbers(monkeypatch, tmp_path):
    im = synthetic()
    p = tmp_path / "s.gguf"
    save(im, p)
    loaded = load(p)
    order = sorted(loaded.entries, key=_template)
    plan = engine.plan_batches(order, loaded.entries, _template, 3)
    one = batched.run_all(plan, str(p), None, threads=1)
    pids = count_forks(monkeypatch)
    seen = []
    forked = batched.run_all(plan, str(p), None, progress=seen.append, threads=3, fork=True)
    assert len(pids) == 2  # the parent takes one share, two children the others
    assert forked == one
    assert sum(seen) == len(one)
    assert compute_stats(loaded, fork=True).tensors == compute_stats(loaded).tensors


def test_no_fork_beside_other_threads(monkeypatch):
    """A caller with threads (the app) gets threads: a forked child would inherit their held locks."""
    import threading

    im = synthetic()
    order = sorted(im.entries, key=_template)
    plan = engine.plan_batches(order, im.entries, _template, 2)
    forks = []
    monkeypatch.setattr(engine.os, "fork", lambda: forks.append(1) or 0)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        res = batched.run_all(plan, None, None, threads=2, fork=True)
    finally:
        stop.set()
        t.join()
    assert not forks and len(res) == sum(len(b) for b in plan) - sum(c.helper for b in plan for c in b)


def test_worker_errors_reach_the_caller(monkeypatch, tmp_path):
    from imatui.errors import CorruptError

    im = synthetic()
    order = sorted(im.entries, key=_template)
    plan = engine.plan_batches(order, im.entries, _template, 2)
    parent = engine.os.getpid()
    real = batched.run_batch

    def failing(cols, *a, **k):
        if engine.os.getpid() != parent:
            raise CorruptError("tensor x has NaN", "f.gguf")
        return real(cols, *a, **k)

    monkeypatch.setattr(batched, "run_batch", failing)
    pids = count_forks(monkeypatch)
    with pytest.raises(CorruptError) as e:
        batched.run_all(plan, None, None, threads=2, fork=True)
    assert pids and str(e.value) == "f.gguf: tensor x has NaN" and e.value.path == "f.gguf"

    def dying(cols, *a, **k):
        if engine.os.getpid() != parent:
            engine.os._exit(3)
        return real(cols, *a, **k)

    monkeypatch.setattr(batched, "run_batch", dying)
    with pytest.raises(ChildProcessError, match="ended without its results"):
        batched.run_all(plan, None, None, threads=2, fork=True)

    # a child cut off while it writes (the parent reads a part of the pickle)
    monkeypatch.setattr(batched, "run_batch", real)
    from imatui import forked as forked_module

    real_dumps = forked_module.pickle.dumps
    monkeypatch.setattr(forked_module.pickle, "dumps", lambda obj: real_dumps(obj)[:40])
    with pytest.raises(ChildProcessError, match=r"ended without its results \(exit status 0\)"):
        batched.run_all(plan, None, None, threads=2, fork=True)


def test_lazy_file_and_memory_agree(tmp_path):
    im = synthetic()
    p = tmp_path / "s.gguf"
    save(im, p)
    a, b = compute_stats(im), compute_stats(load(p))
    assert [t.to_dict() for t in a.tensors] == [t.to_dict() for t in b.tensors]


def test_cancel_stops_with_interrupted_error():
    im = synthetic()
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(InterruptedError):
        compute_stats(im, cancelled=cancelled)


def test_progress_reaches_the_total():
    seen = []
    im = synthetic()
    compute_stats(im, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(im), len(im)) and all(d <= t for d, t in seen)
