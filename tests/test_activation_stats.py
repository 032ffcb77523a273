"""Activation statistics (llama.cpp's imatrix README, "preferred" mode, when in_sum is present),
checked against an independent plain-numpy computation of its definitions:

a = in_sum / count (mean activation per channel); entropy of a_i^2 / sum(a^2) in bits; ZD = share of
|z| > 1 (two-tailed); L2 = ||a - a_prev|| and CosSim = cos(a, a_prev) against the same tensor in the
block before; ECS = 100 * exp(-0.01 * L2) * |CosSim|^10. Per layer, the layer's tensors concatenated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from imatui.formats import load, save
from imatui.imatrix import Entry, Imatrix
from imatui.printers import format_json, format_table
from imatui.stats import compute_stats

N_BLOCKS = 4


def build() -> Imatrix:
    rng = np.random.default_rng(11)
    entries = {}
    for blk in range(N_BLOCKS):
        drift = 0.3 * blk
        # dense: 1 matrix of 16 channels, counts 100
        base = np.linspace(-1, 1, 16) + drift + 0.1 * rng.standard_normal(16)
        count = 100.0
        sums = (base * count).astype(np.float32)
        sums2 = ((base**2 + 0.5) * count).astype(np.float32)
        entries[f"blk.{blk}.attn_q.weight"] = Entry.from_arrays(f"blk.{blk}.attn_q.weight", sums2, [count], sums)
        # MoE: 3 experts x 8 channels, expert 1 never hit in block 2
        counts = np.array([40.0, 0.0 if blk == 2 else 25.0, 10.0])
        a = rng.standard_normal((3, 8)) + drift
        a[counts == 0] = 0
        sums = (a * counts[:, None]).astype(np.float32)
        sums2 = ((a**2 + 1.0) * counts[:, None]).astype(np.float32)
        name = f"blk.{blk}.ffn_up_exps.weight"
        entries[name] = Entry.from_arrays(name, sums2, counts, sums)
    return Imatrix(entries=dict(sorted(entries.items())), datasets=["synthetic"], chunk_count=1,
                   chunk_size=100)


def mean_act(e: Entry) -> np.ndarray:
    """(n_mat, n_in) mean activations in float64; an expert never hit contributes zeros."""
    c = e.counts.astype(np.float64)
    out = np.zeros(e.shape)
    live = c > 0
    out[live] = e.sums.astype(np.float64)[live] / c[live][:, None]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    im = build()
    path = tmp_path_factory.mktemp("act") / "act.imatrix.gguf"
    save(im, path)
    return im, compute_stats(load(path))


def test_tensor_activation_statistics(data):
    im, report = data
    assert report.has_activations
    for t in report.tensors:
        e = im[t.name]
        a_full = mean_act(e)
        a = a_full[e.counts > 0].reshape(-1)  # the statistics of the tensor skip unused experts
        assert t.act_mean == pytest.approx(a.mean(), rel=1e-6, abs=1e-9)
        q = a**2 / np.sum(a**2)
        q = q[q > 0]
        h = -np.sum(q * np.log2(q))
        assert t.act_entropy == pytest.approx(h, rel=1e-6)
        assert t.act_entropy_norm == pytest.approx(h / math.log2(a.size), rel=1e-6)
        z = (a - a.mean()) / a.std()
        assert t.act_zd == pytest.approx(np.mean(np.abs(z) > 1), abs=1e-12)
        if t.layer == 0:
            assert t.act_l2 is None and t.act_cossim is None and t.act_ecs is None
            continue
        prev = mean_act(im[t.name.replace(f"blk.{t.layer}.", f"blk.{t.layer - 1}.")]).reshape(-1)
        _assert_activation_stats(t, a_full.reshape(-1), prev)


def _assert_activation_stats(row, cur: np.ndarray, prev: np.ndarray) -> None:
    """llama's "preferred" numbers of a tensor or layer row: L2 distance and cosine of the mean
    activations to the previous block's, and ECS = 100 exp(-0.01 L2) |cos|^10."""
    l2 = np.linalg.norm(cur - prev)
    cos = cur @ prev / (np.linalg.norm(cur) * np.linalg.norm(prev))
    assert row.act_l2 == pytest.approx(l2, rel=1e-6)
    assert row.act_cossim == pytest.approx(cos, rel=1e-6)
    assert row.act_ecs == pytest.approx(100 * math.exp(-0.01 * l2) * abs(cos) ** 10, rel=1e-5)


def test_layer_activation_statistics(data):
    im, report = data
    assert [lay.layer for lay in report.layers] == list(range(N_BLOCKS))
    assert report.layers[0].act_l2 is None
    for lay in report.layers[1:]:
        cur = np.concatenate([mean_act(im[f"blk.{lay.layer}.{k}.weight"]).reshape(-1)
                              for k in ("attn_q", "ffn_up_exps")])
        prev = np.concatenate([mean_act(im[f"blk.{lay.layer - 1}.{k}.weight"]).reshape(-1)
                               for k in ("attn_q", "ffn_up_exps")])
        _assert_activation_stats(lay, cur, prev)


def test_activation_statistics_are_printed(data):
    _, report = data
    table = format_table(report)
    assert "Activation statistics per layer" in table
    l1 = report.layers[1]
    assert f"{l1.act_l2:12.4f}" in table and f"{l1.act_ecs:10.4f}" in table
    import json

    d = json.loads(format_json(report))
    t = next(x for x in d["tensors"] if x["name"] == "blk.3.ffn_up_exps.weight")
    assert t["act_l2"] == pytest.approx(report.tensor("blk.3.ffn_up_exps.weight").act_l2)


def test_no_activation_statistics_without_in_sum(prose):
    report = compute_stats(load(prose))
    assert not report.has_activations
    assert all(t.act_l2 is None and t.act_mean is None for t in report.tensors)
    assert "Activation statistics" not in format_table(report)
