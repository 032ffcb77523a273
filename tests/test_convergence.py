"""Convergence between checkpoints, on llama-imatrix's real --save-frequency snapshots.

The expected numbers were computed with gguf-py's GGUFReader and plain numpy (sum of in_sum2 rows /
sum of counts, float64 cosine), independently of imatui's readers.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES
from imatui.formats import load
from imatui.imatrix import Entry, Imatrix
from imatui.stats.convergence import (
    Checkpoint,
    ConvergenceSeries,
    channel_means,
    cosine,
    format_duration,
    format_rate,
    series_from_files,
)

SNAPSHOTS = [FIXTURES / "checkpoints" / f"smollm2-prose.imatrix.gguf.at_{n}" for n in (10, 20, 30, 40)]


def test_channel_means_are_sums2_over_counts():
    im = load(SNAPSHOTS[0])
    means = channel_means(im)
    assert len(means) == 210
    np.testing.assert_allclose(means["blk.0.attn_k.weight"][:3], [0.00016692, 0.00033417, 0.00036736], rtol=1e-4)
    assert im["blk.0.attn_k.weight"].counts.tolist() == [4608.0]  # tokens llama-imatrix counted by chunk 10


def test_series_from_snapshot_files_matches_numpy():
    # given out of order on purpose: the series sorts by chunk count
    series = series_from_files([SNAPSHOTS[2], SNAPSHOTS[0], SNAPSHOTS[3], SNAPSHOTS[1]])
    assert [c.chunk_count for c in series.checkpoints] == [10, 20, 30, 40]
    assert [(s.from_chunks, s.to_chunks) for s in series.steps] == [(10, 20), (20, 30), (30, 40)]
    assert series.mins() == pytest.approx([0.9854764779437304, 0.9962194323634926, 0.9819378560855336], abs=1e-12)
    assert series.medians() == pytest.approx([0.9998627423006359, 0.9999882732869587, 0.999926569785422], abs=1e-12)
    assert all(len(s.cossim) == 210 for s in series.steps)
    first, second, third = series.steps
    assert [n for n, _ in first.most_moved[:3]] == [
        "blk.21.ffn_down.weight", "blk.19.ffn_down.weight", "blk.4.ffn_down.weight"]
    assert first.most_moved[1][1] == pytest.approx(0.9866808487105329, abs=1e-12)
    assert second.min_tensor == "blk.4.ffn_down.weight"
    assert third.min_tensor == "blk.27.ffn_down.weight"
    assert [n for n, _ in third.most_moved[:2]] == ["blk.27.ffn_down.weight", "blk.22.ffn_down.weight"]


def test_live_series_rates_and_resets():
    series = ConvergenceSeries()
    ims = [load(p) for p in SNAPSHOTS]
    assert series.add(ims[0], when=1000.0) is None
    assert series.chunks_per_minute() is None
    step = series.add(ims[1], when=1000.0 + 120)  # 10 chunks in 2 minutes
    assert step is not None and step.chunks_per_minute == pytest.approx(5.0)
    assert series.add(ims[1], when=1000.0 + 130) is None  # the same data reloaded: no new step
    series.add(ims[2], when=1000.0 + 150)  # 10 chunks in 30 s
    assert series.chunks_per_minute() == pytest.approx(20.0)
    assert series.since_last(now=1000.0 + 200) == pytest.approx(50.0)
    assert len(series.steps) == 2
    # a new collection into the same file starts the series again
    assert series.add(ims[0], when=2000.0) is None
    assert len(series) == 1 and series.steps == []


def test_snapshots_inserted_out_of_order_give_the_same_steps():
    series = ConvergenceSeries()
    for n in (3, 1, 0, 2):
        im = load(SNAPSHOTS[n])
        assert series.insert_checkpoint(Checkpoint(im.chunk_count, None, channel_means(im)))
    assert not series.insert_checkpoint(Checkpoint(20, None, {}))
    assert [c.chunk_count for c in series.checkpoints] == [10, 20, 30, 40]
    assert series.mins() == pytest.approx([0.9854764779437304, 0.9962194323634926, 0.9819378560855336], abs=1e-12)


def test_moe_rows_are_pooled_by_tokens_and_unhit_tensors_skipped():
    moe = Entry.from_arrays("blk.0.ffn_down_exps.weight", np.array([[2.0, 0.0], [0.0, 6.0]]), [1.0, 3.0])
    dead = Entry.from_arrays("blk.0.ffn_up_exps.weight", np.zeros((2, 2)), [0.0, 0.0])
    means = channel_means(Imatrix(entries={moe.name: moe, dead.name: dead}))
    assert list(means) == [moe.name]
    np.testing.assert_allclose(means[moe.name], [0.5, 1.5])
    assert cosine(np.zeros(2), np.ones(2)) is None
    assert cosine(np.ones(2), np.ones(3)) is None
    a = Checkpoint(10, None, {"t": np.array([1.0, 0.0])})
    b = Checkpoint(20, None, {"t": np.array([1.0, 1.0])})
    series = ConvergenceSeries()
    series.add_checkpoint(a)
    step = series.add_checkpoint(b)
    assert step.min == pytest.approx(2 ** -0.5) and step.seconds is None and step.chunks_per_minute is None


def test_formatting():
    assert format_duration(None) == "–"
    assert format_duration(45) == "45s"
    assert format_duration(725) == "12m05s"
    assert format_duration(3 * 3600 + 125) == "3h02m"
    assert format_rate(4.25) == "4.2/min"
    assert format_rate(None) == "–"


@pytest.mark.parametrize("sub,width", [(1 << 18, 256), (40, 4), (7, 1)])
def test_channel_means_batched_equal_a_plain_sum(monkeypatch, sub, width):
    """The engine's blocks and sub-blocks (rows cut in pieces, many or few rows a sub-block), in threads or
    worker processes: each channel's sum over the matrices divided by the tensor's total count."""
    from imatui.stats import engine

    monkeypatch.setattr(engine, "SUB_ELEMENTS", sub)
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", 4 * sub)
    monkeypatch.setattr(engine, "MIN_WIDTH", width)
    rng = np.random.default_rng(sub)
    entries = {}
    for blk in range(5):
        for name, (n_mat, n_in) in {"ffn_up_exps": (6, 24), "attn_q": (1, 40), "ffn_down_exps": (6, 9)}.items():
            counts = rng.integers(1 if n_mat == 1 else 0, 30, n_mat).astype(np.float64)
            full = f"blk.{blk}.{name}.weight"
            entries[full] = Entry.from_arrays(full, rng.lognormal(0, 2, (n_mat, n_in)).astype(np.float32), counts)
    never = np.zeros(6)
    entries["blk.5.ffn_up_exps.weight"] = Entry.from_arrays("blk.5.ffn_up_exps.weight", np.ones((6, 24), np.float32),
                                                            never)
    im = Imatrix(entries=entries, datasets=["s"], chunk_count=1, chunk_size=512)
    monkeypatch.setattr(engine.threading, "active_count", lambda: 1)
    for fork in (False, True):
        means = channel_means(im, fork=fork)
        assert list(means) == [n for n in entries if n != "blk.5.ffn_up_exps.weight"]  # never hit: left out
        for name, m in means.items():
            e = entries[name]
            want = np.asarray(e.sums2, dtype=np.float64).sum(axis=0) / e.counts.sum()
            np.testing.assert_allclose(m, want, rtol=1e-14)
