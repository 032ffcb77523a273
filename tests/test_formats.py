"""Reading and writing: what the fixtures hold, detection by content, lazy reads, the writer's bytes,
and the 4-chunk fixture (which has no llama reference output) checked against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from imatui.errors import OverwriteError
from imatui.formats import detect_format, is_imatrix_file, load, save
from imatui.imatrix import Entry, Imatrix, split_name
from imatui.stats import compute_stats
from tests.conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
FOUR = FIXTURES / "smollm2-prose-4chunks.imatrix.gguf"
DAT = FIXTURES / "smollm2-prose.imatrix.dat"


def test_prose_fixture_contents():
    im = load(PROSE)
    assert im.format == "gguf" and len(im) == 210
    assert (im.chunk_count, im.chunk_size, im.datasets) == (40, 512, ["../calib/prose.txt"])
    e = im["blk.0.ffn_down.weight"]
    assert e.shape == (1, 1536) and (e.layer, e.kind) == (0, "ffn_down")
    assert e.counts.tolist() == [40 * 512]
    assert e.sums2.dtype == np.float32 and e.sums2.shape == (1, 1536)
    assert im["blk.7.attn_q.weight"].shape == (1, 576)
    assert im.names() == sorted(im.names())


def test_legacy_loads_as_llama_does():
    g, d = load(PROSE), load(DAT)
    assert d.format == "dat" and d.chunk_count == 40 and d.datasets == ["../calib/prose.txt"]
    assert d.names() == g.names()
    for name in ("blk.0.attn_k.weight", "blk.29.ffn_down.weight"):
        assert d[name].counts.tolist() == [20480.0]
        np.testing.assert_allclose(d[name].sums2, g[name].sums2, rtol=1e-6)
    d2 = load(DAT, chunk_size=256)  # the chunk size is not in a legacy file: counts follow it
    assert d2["blk.0.attn_k.weight"].counts.tolist() == [40 * 256]


def test_detect_by_content_not_name(tmp_path):
    p = tmp_path / "legacy.gguf"
    p.write_bytes(DAT.read_bytes())
    q = tmp_path / "modern.dat"
    q.write_bytes(PROSE.read_bytes())
    assert detect_format(p) == "dat" and detect_format(q) == "gguf"
    assert load(p).format == "dat" and load(q).format == "gguf"
    assert is_imatrix_file(p) and is_imatrix_file(q)
    txt = tmp_path / "notes.gguf"
    txt.write_text("hello\n")
    assert not is_imatrix_file(txt)


def test_lazy_and_eager_agree():
    lazy, eager = load(PROSE), load(PROSE, lazy=False)
    for name in lazy.names():
        assert np.array_equal(lazy[name].sums2, eager[name].sums2)
    m = lazy.materialize()
    assert np.array_equal(m["blk.3.ffn_up.weight"].sums2, eager["blk.3.ffn_up.weight"].sums2)


def test_split_name():
    assert split_name("blk.12.ffn_down_exps.weight") == (12, "ffn_down_exps")
    assert split_name("output.weight") == (None, "output")
    assert split_name("token_embd") == (None, "token_embd")


def test_writer_is_llamas_layout(tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "w.gguf"
    save(load(PROSE), out)
    assert out.read_bytes() == PROSE.read_bytes()
    r = GGUFReader(out)
    assert "general.architecture" not in r.fields
    assert {"general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(r.fields)


def test_writer_moe_shapes_and_in_sum(tmp_path):
    from gguf import GGUFReader

    rng = np.random.default_rng(1)
    e = Entry.from_arrays("blk.0.ffn_up_exps.weight", rng.random((4, 8), dtype=np.float32), [3, 0, 5, 1],
                          sums=rng.standard_normal((4, 8)).astype(np.float32))
    im = Imatrix(entries={e.name: e}, datasets=["a", "b"], chunk_count=2, chunk_size=4,
                 metadata={"imatui.model": "test"})
    out = tmp_path / "moe.gguf"
    save(im, out)
    r = GGUFReader(out)
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    # ggml ne order: in_sum2 [n_in, n_mat], counts [1, n_mat]
    assert shapes == {"blk.0.ffn_up_exps.weight.in_sum2": [8, 4], "blk.0.ffn_up_exps.weight.counts": [1, 4],
                      "blk.0.ffn_up_exps.weight.in_sum": [8, 4]}
    back = load(out)
    assert back.datasets == ["a", "b"] and back.metadata["imatui.model"] == "test"
    assert back[e.name].counts.tolist() == [3, 0, 5, 1]
    assert np.array_equal(back[e.name].sums2, e.sums2) and np.array_equal(back[e.name].sums, e.sums)


def test_save_never_overwrites_unasked(tmp_path):
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(OverwriteError):
        save(load(PROSE), out)
    assert out.read_bytes() == b"mine"
    save(load(PROSE), out, force=True)
    assert out.read_bytes() == PROSE.read_bytes()


# --- the 4-chunk fixture: no llama reference, so check what can be checked ------------------------

def test_four_chunk_counts_and_metadata():
    im = load(FOUR)
    assert (im.chunk_count, im.chunk_size) == (4, 512) and len(im) == 210
    # every tensor saw every token of the 4 chunks: 4 x 512
    assert {float(e.counts[0]) for e in im.entries.values()} == {2048.0}
    assert all(e.n_mat == 1 for e in im.entries.values())


def test_four_chunks_are_a_prefix_of_the_longer_runs():
    """Same model and text: sums of squares only grow as chunks are added."""
    four = load(FOUR)
    for other in (FIXTURES / "checkpoints" / "smollm2-prose.imatrix.gguf.at_10", PROSE):
        more = load(other)
        for name in four.names():
            a, b = four[name].sums2, more[name].sums2
            assert np.all(a <= b * (1 + 1e-5) + 1e-6), (other.name, name)


def test_four_chunk_statistics_agree_with_plain_numpy():
    im = load(FOUR)
    report = compute_stats(im)
    assert len(report.tensors) == 210 and len(report.layers) == 30 and report.skipped_matrices == 0
    for t in report.tensors:
        raw = im[t.name].sums2.astype(np.float64).reshape(-1)
        v = raw / 2048.0
        assert t.n == v.size
        assert t.sum == pytest.approx(v.sum(), rel=1e-5)
        assert t.min == pytest.approx(v.min(), rel=1e-6) and t.max == pytest.approx(v.max(), rel=1e-6)
        assert t.mean == pytest.approx(v.mean(), rel=1e-5)
        assert t.std == pytest.approx(v.std(), rel=1e-3)
        assert t.active == pytest.approx(np.mean(v > 1e-5), abs=1 / v.size)
        p = v[v > 0] / v.sum()
        assert t.entropy == pytest.approx(-(p * np.log2(p)).sum(), abs=2e-4)
        assert t.entropy_norm == pytest.approx(t.entropy / np.log2(v.size), rel=1e-5)
        zd = np.mean((v - v.mean()) / v.std() > 1)
        assert abs(t.zd - zd) <= 1.5 / v.size  # one value on the z = 1 edge may round either way
        if t.layer == 0:
            assert t.cossim == 0.0
        else:
            prev = im[t.name.replace(f"blk.{t.layer}.", f"blk.{t.layer - 1}.")].sums2.astype(np.float64).reshape(-1)
            cos = raw @ prev / np.sqrt((raw @ raw) * (prev @ prev))
            assert t.cossim == pytest.approx(cos, abs=2e-4)
        d = v - v.mean()  # our extras accumulate float32 products per block: 1e-5 is their precision
        assert t.skewness == pytest.approx((d**3).mean() / (d**2).mean() ** 1.5, rel=1e-5)
        assert t.kurtosis == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3, rel=1e-5)
        assert t.dead == int(np.sum(v == 0))
        assert t.top_values[0] == pytest.approx(v.max(), rel=1e-6) and t.top_channels[0] == int(np.argmax(v))
    # per layer: element-weighted means of the tensors' Σ
    for lay in report.layers:
        ts = [t for t in report.tensors if t.layer == lay.layer]
        w = np.array([t.n for t in ts], dtype=np.float64)
        assert lay.sum == pytest.approx(np.dot(w, [t.sum for t in ts]) / w.sum(), rel=1e-5)
        assert lay.zd == pytest.approx(np.dot(w, [t.zd for t in ts]) / w.sum(), rel=1e-5, abs=1e-7)
        assert lay.n_tensors == 7 and lay.elements == int(w.sum())


def test_browser_check_accepts_imatrices_and_turns_models_away_by_their_header(tmp_path, monkeypatch):
    from gguf import GGUFWriter

    import imatui.formats.detect as detect

    assert is_imatrix_file(PROSE) and is_imatrix_file(DAT) and is_imatrix_file(FOUR)
    model = tmp_path / "model.gguf"
    w = GGUFWriter(str(model), arch="llama")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(5000)])
    w.add_string("quantize.imatrix.file", "imatrix.gguf")  # a model quantized with an imatrix
    w.add_uint32("quantize.imatrix.chunks_count", 40)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    parsed = []
    monkeypatch.setattr(detect, "load", lambda *a, **k: parsed.append(a) or load(*a, **k))
    assert not is_imatrix_file(model)
    assert parsed == []  # turned away by the sniff, never parsed
    assert is_imatrix_file(PROSE) and len(parsed) == 1
    unreadable = tmp_path / "dir.gguf"
    unreadable.mkdir()
    assert not is_imatrix_file(unreadable)
