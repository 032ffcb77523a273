"""imatui.stats.diff and imatui.diff_printers on the real fixtures (and files derived from them)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import count_forks
from imatui.cli import main
from imatui.diff_printers import format_diff, sort_rows
from imatui.errors import ImatrixError
from imatui.formats import load
from imatui.formats.write import save
from imatui.imatrix import Entry, Imatrix
from imatui.stats.diff import channel_pair, compute_diff

PROSE = "smollm2-prose.imatrix.gguf"
CODE = "smollm2-code.imatrix.gguf"
DAT = "smollm2-prose.imatrix.dat"


def _gguf_means(path, name: str) -> np.ndarray:
    """sums2 / counts straight from the GGUF tensors, bypassing imatui's reader."""
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    sums2 = np.array(tensors[name + ".in_sum2"].data, dtype=np.float64).reshape(-1)
    count = float(np.array(tensors[name + ".counts"].data).reshape(-1)[0])
    return sums2 / count


@pytest.fixture(scope="module")
def prose_vs_code():
    fixtures = Path(__file__).parent / "fixtures"
    return compute_diff(load(fixtures / PROSE), load(fixtures / CODE))


def test_self_diff_is_identity(fixtures):
    im = load(fixtures / PROSE)
    report = compute_diff(im, im)
    assert len(report.tensors) == 210 and report.only_a == [] and report.only_b == []
    for t in report.tensors:
        assert t.comparable, t.name
        assert abs(t.cossim - 1.0) < 1e-12, t.name
        assert t.js == pytest.approx(0.0, abs=1e-15), t.name
        assert t.rank_a == t.rank_b and t.rank_shift == 0
        assert t.sum_ratio == 1.0
    assert sorted(t.rank_a for t in report.tensors) == list(range(1, 211))
    assert report.header_differences == []
    assert all(lay.cossim == pytest.approx(1.0, abs=1e-12) for lay in report.layers)


def test_gguf_against_legacy_dat_of_same_data(fixtures):
    report = compute_diff(load(fixtures / PROSE), load(fixtures / DAT))
    assert len(report.comparable) == 210
    assert min(t.cossim for t in report.tensors) >= 0.9999
    assert max(t.js for t in report.tensors) < 1e-9
    # only the container differs
    assert [h.field for h in report.header_differences] == ["format"]


def test_prose_vs_code_most_different(fixtures, prose_vs_code):
    report = prose_vs_code
    assert [h.field for h in report.header_differences] == ["datasets"]
    worst = report.most_different()
    assert [t.name for t in worst[:2]] == ["blk.24.ffn_down.weight", "blk.5.ffn_down.weight"]
    t = worst[0]
    # checked by hand with numpy on the GGUF tensors (see _gguf_means)
    a = _gguf_means(fixtures / PROSE, t.name)
    b = _gguf_means(fixtures / CODE, t.name)
    assert t.cossim == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-12)
    assert t.cossim == pytest.approx(0.2652168352305437, abs=1e-12)
    assert t.js == pytest.approx(0.26429871617014383, abs=1e-12)
    # channel 157 carries 0.075 in prose and 70.2 in code: the outlier that code text lights up
    assert t.top_channel == 157 == int(np.argmax(np.abs(b / b.sum() - a / a.sum())))
    assert t.top_value_a == pytest.approx(0.07519295, rel=1e-6)
    assert t.top_value_b == pytest.approx(70.203548, rel=1e-6)
    assert (t.sum_a, t.sum_b) == (pytest.approx(551.76025, rel=1e-6), pytest.approx(546.91833, rel=1e-6))
    assert (t.rank_a, t.rank_b, t.rank_shift) == (7, 6, -1)
    assert worst[1].cossim == pytest.approx(0.2736144552084061, abs=1e-12)
    assert worst[1].rank_shift == 118 - 137
    # clearly below 1 for many tensors, but attention inputs stay close
    assert sum(1 for x in report.tensors if x.cossim < 0.9) >= 20
    assert report.tensor("blk.1.attn_k.weight").cossim == pytest.approx(0.9999122580229102, abs=1e-12)
    # sparkline data: one cosine per kind and layer, and the per-layer aggregate
    assert set(report.by_kind) == {"attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up"}
    assert len(report.by_kind["ffn_down"]) == 30 == len(report.layers)
    assert report.by_kind["ffn_down"][24] == t.cossim
    assert report.layers[0].cossim == pytest.approx(0.8866066131571247, abs=1e-12)


def _derived(fixtures, tmp_path, mutate) -> Imatrix:
    im = load(fixtures / PROSE).materialize()
    mutate(im.entries)
    im.entries = dict(sorted(im.entries.items()))
    out = save(im, tmp_path / "derived.imatrix.gguf")
    return load(out)


def test_tensor_removed_is_listed_only_in_a(fixtures, tmp_path):
    b = _derived(fixtures, tmp_path, lambda e: e.pop("blk.7.ffn_up.weight"))
    report = compute_diff(load(fixtures / PROSE), b)
    assert report.only_a == ["blk.7.ffn_up.weight"] and report.only_b == []
    row = report.tensor("blk.7.ffn_up.weight")
    assert not row.comparable and row.reason == "missing in B"
    # llama-imatrix --show-statistics prints 9.05 for this tensor
    assert row.sum_a == pytest.approx(9.05, abs=0.005) and row.sum_b is None and row.cossim is None
    assert row.rank_a is not None and row.rank_b is None
    assert [h.field for h in report.header_differences] == ["tensors"]
    assert len(report.comparable) == 209
    # the reverse direction
    assert compute_diff(b, load(fixtures / PROSE)).only_b == ["blk.7.ffn_up.weight"]
    text = format_diff(report, "table")
    assert "only in A: blk.7.ffn_up.weight" in text
    assert "blk.7.ffn_up.weight" in text and "not comparable: missing in B" in text


def test_shape_mismatch_is_not_comparable(fixtures, tmp_path):
    name = "blk.3.attn_q.weight"

    def shrink(entries):
        e = entries[name]
        entries[name] = Entry.from_arrays(name, e.sums2[:, :288], e.counts)

    report = compute_diff(load(fixtures / PROSE), _derived(fixtures, tmp_path, shrink))
    row = report.tensor(name)
    assert not row.comparable
    assert row.reason == "shape mismatch: 1x576 in A, 1x288 in B"
    assert row.cossim is None and row.js is None and row.top_channel is None
    assert len(report.comparable) == 209 and report.only_a == [] == report.only_b
    assert report.by_kind["attn_q"][3] is None
    doc = json.loads(format_diff(report, "json"))
    j = {t["name"]: t for t in doc["tensors"]}[name]
    assert j["comparable"] is False and j["cossim"] is None and j["shape_b"] == [1, 288]


def _moe(counts, sums2, name="blk.0.ffn_down_exps.weight") -> Imatrix:
    return Imatrix(entries={name: Entry.from_arrays(name, sums2, counts)}, chunk_count=1)


def test_moe_zero_count_experts_are_left_out_of_both_sides():
    rng = np.random.default_rng(5)
    s_a = rng.random((4, 8)).astype(np.float32) * 10
    s_b = rng.random((4, 8)).astype(np.float32) * 10
    c_a = np.array([10.0, 0.0, 20.0, 5.0])
    c_b = np.array([8.0, 3.0, 0.0, 4.0])
    s_a[1] = 0  # expert 1 never hit in A
    s_b[2] = 0  # expert 2 never hit in B
    report = compute_diff(_moe(c_a, s_a), _moe(c_b, s_b))
    t = report.tensors[0]
    assert t.comparable and t.experts_compared == 2 and t.experts_skipped == 2
    live = [0, 3]
    va = (s_a[live].astype(np.float64) / c_a[live][:, None]).reshape(-1)
    vb = (s_b[live].astype(np.float64) / c_b[live][:, None]).reshape(-1)
    assert t.cossim == pytest.approx(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb), abs=1e-12)
    i = int(np.argmax(np.abs(vb / vb.sum() - va / va.sum())))
    assert t.top_channel == live[i // 8] * 8 + i % 8
    # each side's Σ is its own llama Σ over its live experts
    assert t.sum_a == pytest.approx(float((s_a[[0, 2, 3]] / c_a[[0, 2, 3]][:, None]).sum()), rel=1e-6)
    table = format_diff(report, "table")
    assert f"e{t.top_channel // 8}:{t.top_channel % 8}: " in table  # expert:channel in the top column
    pair = channel_pair(_moe(c_a, s_a), _moe(c_b, s_b), t.name)
    assert pair.experts == live and np.allclose(pair.a, va) and np.allclose(pair.b, vb)


def test_zero_counts_row_is_not_comparable():
    s = np.ones((2, 4), dtype=np.float32)
    report = compute_diff(_moe(np.array([1.0, 2.0]), s), _moe(np.array([0.0, 0.0]), s * 0))
    t = report.tensors[0]
    assert not t.comparable and t.reason == "zero counts in B (no tokens reached it)"
    assert t.sum_b is None and t.rank_b is None
    report = compute_diff(_moe(np.array([1.0, 0.0]), s), _moe(np.array([0.0, 2.0]), s))
    assert report.tensors[0].reason == "no matrix (expert) has tokens in both A and B"


def test_sort_rows_any_column(prose_vs_code):
    rows = prose_vs_code.tensors
    by_js = sort_rows(rows, "js")
    assert by_js[0].js == max(t.js for t in rows)
    assert [t.cossim for t in sort_rows(rows, "-cossim")][:1] == [max(t.cossim for t in rows)]
    assert sort_rows(rows, "rank_a")[0].rank_a == 1
    assert abs(sort_rows(rows, "rank_shift")[0].rank_shift) == max(abs(t.rank_shift) for t in rows)
    with pytest.raises(ImatrixError, match="unknown sort column 'nope'"):
        sort_rows(rows, "nope")


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_json(fixtures, capsys):
    assert main(["diff", str(fixtures / PROSE), str(fixtures / CODE), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    doc = json.loads(out)
    assert doc["a"].endswith(PROSE) and doc["b"].endswith(CODE)
    assert doc["only_a"] == [] and doc["only_b"] == []
    assert doc["header"]["datasets"] == {"a": ["../calib/prose.txt"], "b": ["../calib/code.txt"], "differs": True}
    assert doc["header"]["chunk_count"] == {"a": 40, "b": 40, "differs": False}
    assert len(doc["tensors"]) == 210
    first = doc["tensors"][0]
    for key in ("name", "layer", "kind", "sum_a", "sum_b", "sum_ratio", "cossim", "js", "rank_a", "rank_b",
                "rank_shift", "top_channel", "comparable", "reason"):
        assert key in first
    assert (first["name"], first["layer"], first["kind"]) == ("blk.24.ffn_down.weight", 24, "ffn_down")
    assert first["cossim"] == pytest.approx(0.2652168352305437, abs=1e-12)
    assert [t["cossim"] for t in doc["tensors"]] == sorted(t["cossim"] for t in doc["tensors"])


def test_cli_json_missing_tensor_has_nulls_not_nan(fixtures, tmp_path, capsys):
    b = _derived(fixtures, tmp_path, lambda e: e.pop("blk.0.attn_k.weight"))
    assert main(["diff", str(fixtures / PROSE), str(b.path), "--format", "json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["only_a"] == ["blk.0.attn_k.weight"]
    row = doc["tensors"][-1]
    assert row["name"] == "blk.0.attn_k.weight" and row["cossim"] is None and row["sum_b"] is None
    assert "NaN" not in out and "Infinity" not in out


def test_cli_csv(fixtures, capsys):
    assert main(["diff", str(fixtures / PROSE), str(fixtures / CODE), "--format", "csv", "--sort", "name"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:10] == ["name", "layer", "kind", "sum_a", "sum_b", "sum_ratio", "cossim", "js",
                            "rank_a", "rank_b"]
    assert len(rows) == 211
    assert rows[1][0] == "blk.0.attn_k.weight"
    assert float(rows[1][6]) == pytest.approx(0.9942462426419088, abs=1e-12)


def test_cli_table(fixtures, capsys):
    assert main(["diff", str(fixtures / PROSE), str(fixtures / CODE), "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "differs: datasets ../calib/prose.txt ≠ ../calib/code.txt"
    head = next(i for i, line in enumerate(lines) if line.startswith("Tensor"))
    assert lines[head + 2].split()[:6] == ["blk.24.ffn_down.weight", "551.76", "546.92", "0.991", "0.2652",
                                            "0.2643"]
    assert lines[head + 3].startswith("blk.5.ffn_down.weight")
    # aligned: every CosSim value ends in the header's column
    end = lines[head].index("CosSim") + len("CosSim")
    assert all(line[end - 6:end] == f"{float(line[end - 6:end]):.4f}" for line in lines[head + 2:head + 20])


def test_cli_bad_input_is_one_line_exit_2(fixtures, tmp_path, capsys):
    assert main(["diff", str(fixtures / PROSE), str(tmp_path / "missing.gguf"), "--format", "json"]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert err.err.count("\n") == 1 and err.err.startswith("imatui: ") and "missing.gguf" in err.err
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not an imatrix at all")
    assert main(["diff", str(junk), str(fixtures / PROSE), "--format", "table"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["diff", str(fixtures / PROSE), str(fixtures / PROSE), "--format", "csv", "--sort", "nope"]) == 2
    assert "unknown sort column" in capsys.readouterr().err


@pytest.mark.parametrize("bad, words", [(np.nan, "1 non-finite values (NaN or Inf)"),
                                        (-3.0, "negative sums of squares (min -1.5)")])
def test_bad_values_in_a_tensor_only_in_one_file_are_an_error(fixtures, tmp_path, capsys, bad, words):
    """A NaN or negative Σ in a tensor that only A has is not a number in the report (a NaN would
    also break the rank sort): CorruptError naming the tensor, the same line `imatui stats` prints."""
    name = "blk.99.attn_q.weight"
    sums2 = np.full((1, 8), 4.0, dtype=np.float32)
    sums2[0, 3] = bad

    def add(entries):
        entries[name] = Entry.from_arrays(name, sums2, [2.0])

    a = _derived(fixtures, tmp_path, add)
    b = load(fixtures / PROSE)
    for x, y in ((a, b), (b, a)):
        with pytest.raises(ImatrixError) as exc:
            compute_diff(x, y)
        assert str(exc.value) == f"{a.path}: tensor {name} has {words}"
    assert main(["stats", str(a.path)]) == 2
    stats_err = capsys.readouterr().err
    assert main(["diff", str(a.path), str(fixtures / PROSE), "--format", "csv"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == stats_err and err.count("\n") == 1
    assert err == f"imatui: {a.path}: tensor {name} has {words}\n"


# --- the batched engine against the per-tensor code it replaced (tests/diff_reference.py) ---------------

def _random_pair(rng: np.random.Generator) -> tuple[Imatrix, Imatrix]:
    """Two files over up to 12 blocks of 1-3 shapes: MoE tensors with experts at count 0 in A, in B or in
    both, tensors in one file only, another shape in B, identical tensors, dead channels and ties."""
    shapes = [(int(rng.integers(1, 7)), int(rng.choice([1, 3, 8, 16, 40, 96, 257, 512])))
              for _ in range(int(rng.integers(1, 4)))]
    ea, eb = {}, {}
    for blk in range(int(rng.integers(1, 12))):
        for j, (n_mat, n_in) in enumerate(shapes):
            name = f"blk.{blk}.t{j}.weight"
            ca = rng.integers(0, 40, n_mat).astype(np.float64)
            cb = rng.integers(0, 40, n_mat).astype(np.float64)
            sa = (rng.lognormal(0, 2, (n_mat, n_in)) * ca[:, None]).astype(np.float32)
            if rng.random() < 0.2:
                sb, cb = sa.copy(), ca.copy()  # the same tensor: cosine 1, divergence 0
            else:
                sb = (sa * rng.lognormal(0, 0.3, (n_mat, n_in)) * (cb[:, None] + 1)).astype(np.float32)
            if rng.random() < 0.3:
                sa[:, rng.integers(0, n_in, 2)] = 0
            roll = rng.random()
            if roll < 0.08:
                ea[name] = Entry.from_arrays(name, sa, ca)  # only in A
            elif roll < 0.16:
                eb[name] = Entry.from_arrays(name, sb, cb)  # only in B
            elif roll < 0.22 and n_in % 2 == 0:
                ea[name] = Entry.from_arrays(name, sa, ca)
                eb[name] = Entry.from_arrays(name, sb.reshape(n_mat * 2, n_in // 2), np.repeat(cb, 2))
            else:
                ea[name] = Entry.from_arrays(name, sa, ca)
                eb[name] = Entry.from_arrays(name, sb, cb)
                if rng.random() < 0.3:  # a copy in both files, as llama's attn_k of attn_q: computed once
                    copy = f"blk.{blk}.t{j}x.weight"
                    ea[copy] = Entry.from_arrays(copy, sa.copy(), ca.copy())
                    eb[copy] = Entry.from_arrays(copy, sb.copy(), cb.copy())
    return (Imatrix(entries=ea, datasets=["a"], chunk_count=1, chunk_size=512),
            Imatrix(entries=eb, datasets=["b"], chunk_count=2, chunk_size=512))


@pytest.mark.parametrize("seed", [3, 14, 15, 92, 65])
def test_random_files_equal_the_per_tensor_code(monkeypatch, seed, compare_path):
    """Random files, and random batch, block and sub-block sizes: Σ and its ranks to the bit (llama's float32
    sums, as `imatui stats`), the cosine and the divergence to 1e-12, the same top channel; in numpy and
    in the compiled loops."""
    from imatui.stats import compare_np, engine
    from tests.diff_reference import reference_row

    rng = np.random.default_rng(seed)
    monkeypatch.setattr(engine, "MAX_COLUMNS", int(rng.integers(1, 40)))
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", int(rng.choice([1, 64, 4096, 1 << 19])))
    monkeypatch.setattr(engine, "SUB_ELEMENTS", int(rng.choice([4, 50, 2048, 1 << 18])))
    monkeypatch.setattr(engine, "MIN_WIDTH", int(rng.choice([1, 8, 256])))
    monkeypatch.setattr(compare_np, "PIECE_ELEMENTS", int(rng.choice([1, 7, 100, 1 << 15])))  # numpy's pieces
    a, b = _random_pair(rng)
    report = compute_diff(a, b)
    names = sorted(set(a.entries) | set(b.entries))
    assert [t.name for t in report.tensors] == names
    compared = 0
    for t in report.tensors:
        with np.errstate(all="ignore"):
            r = reference_row(t.name, a.entries.get(t.name), b.entries.get(t.name))
        for f in ("sum_a", "sum_b", "sum_ratio", "comparable", "reason", "experts_compared", "experts_skipped",
                  "shape_a", "shape_b"):
            assert getattr(t, f) == getattr(r, f), (t.name, f, getattr(t, f), getattr(r, f))
        # the same channel, unless two moved by the same share to the last bits (float64 sums in another order)
        tie = t.top_channel != r.top_channel
        assert not tie or abs(abs(t.top_share_delta) - abs(r.top_share_delta)) < 1e-15, t.name
        # in a tie the two channels' own values differ: only the share moved is the same
        for f in ("cossim", "js") + (() if tie else ("top_value_a", "top_value_b", "top_share_delta")):
            assert getattr(t, f) == pytest.approx(getattr(r, f), rel=1e-12, abs=1e-12), (t.name, f)
        compared += t.comparable
    assert compared > 0
    same = [t for t in report.comparable if np.array_equal(np.asarray(a.entries[t.name].sums2),
                                                           np.asarray(b.entries[t.name].sums2))
            and np.array_equal(a.entries[t.name].counts, b.entries[t.name].counts)]
    assert all(t.js == 0.0 for t in same)  # exactly: r = p / m is 1 everywhere


def test_the_divergence_polynomial_is_h_to_the_last_bits():
    """compare_np.SERIES (the compiled loops take the same), evaluated by Horner's rule in float64,
    against h(x) = Σ x^(k-1) / (2k (2k-1)) summed to 1e-19 in long double, on 200,001 points of
    [0, 0.25]: within 5e-16 of it."""
    from imatui.stats import compare_np as compare

    x = np.linspace(0.0, compare.SERIES_X, 200_001)
    exact, power = np.zeros(x.size, np.longdouble), np.ones(x.size, np.longdouble)
    for k in range(1, 40):  # 0.25^39 / (78 · 77): below 1e-25
        exact += power / (2 * k * (2 * k - 1))
        power *= x.astype(np.longdouble)
    h = np.full_like(x, compare.SERIES[-1])
    for c in compare.SERIES[-2::-1]:
        h = h * x + c
    assert float(np.max(np.abs(h - exact) / exact)) < 5e-16


@pytest.mark.parametrize("block", [1, 4096, 1 << 21])
def test_divergence_keeps_its_digits_for_nearly_equal_files(monkeypatch, block, compare_path):
    """Files that differ by 1e-3 to 1e-6 of each value (checkpoints of one run), with a few channels
    changed much (they take the logarithms) or zero in one file: the divergence to 1e-11 of the
    exact one, read a row at a time or in bigger blocks. The logarithms of 2p / (p + q) for all
    channels were off by up to 1e-5 of it here."""
    from imatui.stats import engine
    from tests.diff_reference import js_exact

    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(5)
    ea, eb = {}, {}
    for j, eps in enumerate((1e-3, 1e-4, 1e-5, 1e-6)):
        name = f"blk.{j}.ffn_down_exps.weight"
        sa = rng.lognormal(0, 1.5, (4, 3001)).astype(np.float32)
        sb = (sa * (1 + eps * rng.standard_normal(sa.shape))).astype(np.float32)
        # a few small channels far from equal (5x: |d| near 0.67) or zero in B (|d| = 1); small, so that
        # they add about a tenth of the divergence
        far = rng.integers(0, 3001, 40)
        sa[:, far] *= np.float32(eps * eps)
        sb[:, far] = sa[:, far] * 5
        zero = slice(10 * j + 1, 10 * j + 8)  # in another piece for each tensor
        sa[1, zero] *= np.float32(eps * eps)
        sb[1, zero] = 0
        ca, cb = np.array([90.0, 80, 70, 60]), np.array([180.0, 160, 140, 0])  # expert 3 not live in B
        ea[name], eb[name] = Entry.from_arrays(name, sa, ca), Entry.from_arrays(name, sb, cb)
    a = Imatrix(entries=ea, datasets=["a"], chunk_count=1, chunk_size=512)
    b = Imatrix(entries=eb, datasets=["b"], chunk_count=2, chunk_size=512)
    report = compute_diff(a, b)
    for t in report.tensors:
        exact = js_exact(ea[t.name], eb[t.name])
        assert 1e-13 < exact < 1e-6
        assert t.js == pytest.approx(exact, rel=1e-11, abs=0), t.name


@pytest.mark.parametrize("min_width", [8, 256])
def test_divergence_of_files_far_apart(monkeypatch, min_width, compare_path):
    """Most channels changed by more than 3x (they take the logarithms) or zero on one side, in rows of
    5000 channels or cut into rows of 8: the divergence to 1e-12 of the exact one, the cosine and the top
    channel as the per-tensor code has them."""
    from imatui.stats import engine
    from tests.diff_reference import js_exact, reference_row

    monkeypatch.setattr(engine, "MIN_WIDTH", min_width)
    monkeypatch.setattr(engine, "SUB_ELEMENTS", 1000)  # rows of 5000 / q with q the most, 8 wide or more
    rng = np.random.default_rng(6)
    sa = rng.lognormal(0, 2, (3, 5000)).astype(np.float32)
    sb = rng.lognormal(0, 2, (3, 5000)).astype(np.float32)
    sa[:, :50], sb[:, 50:100] = 0, 0
    name = "blk.0.ffn_up_exps.weight"
    ea, eb = Entry.from_arrays(name, sa, np.array([5.0, 6, 7])), Entry.from_arrays(name, sb, np.array([3.0, 2, 1]))
    t = compute_diff(Imatrix(entries={name: ea}, datasets=["a"], chunk_count=1, chunk_size=512),
                     Imatrix(entries={name: eb}, datasets=["b"], chunk_count=1, chunk_size=512)).tensors[0]
    exact = js_exact(ea, eb)
    assert 0.1 < exact < 1
    assert t.js == pytest.approx(exact, rel=1e-12, abs=0)
    r = reference_row(name, ea, eb)
    assert t.cossim == pytest.approx(r.cossim, rel=1e-13, abs=0)
    assert t.top_channel == r.top_channel
    assert (t.top_value_a, t.top_value_b) == pytest.approx((r.top_value_a, r.top_value_b), rel=1e-14, abs=0)


def test_worker_processes_and_threads_give_the_same_diff(monkeypatch, tmp_path, compare_path):
    from imatui.stats import engine

    a, b = _random_pair(np.random.default_rng(7))
    save(a, tmp_path / "a.gguf")
    save(b, tmp_path / "b.gguf")
    la, lb = load(tmp_path / "a.gguf"), load(tmp_path / "b.gguf")
    monkeypatch.setattr(engine, "MAX_COLUMNS", 3)  # many batches, for several workers
    one = compute_diff(la, lb)
    forks = count_forks(monkeypatch)
    monkeypatch.setattr(engine, "default_threads", lambda: 3)
    forked = compute_diff(la, lb, fork=True)
    assert len(forks) == 2
    assert [t.to_dict() for t in forked.tensors] == [t.to_dict() for t in one.tensors]
    assert compute_diff(a, b).to_dict()["tensors"] == [
        dict(t.to_dict()) for t in one.tensors]  # in memory and from the files alike


def test_diff_progress_counts_every_tensor_and_cancel_stops_it(fixtures):
    a, b = load(fixtures / PROSE), load(fixtures / CODE)
    seen = []
    compute_diff(a, b, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 210) for i in range(1, 211)]
    calls = []
    with pytest.raises(InterruptedError):
        compute_diff(a, b, cancelled=lambda: calls.append(1) or len(calls) > 2)


def test_nan_in_an_unused_expert_is_an_error_in_the_diff():
    sums2 = np.ones((3, 8), np.float32)
    sums2[1, 4] = np.nan
    counts = np.array([5.0, 0.0, 2.0])
    e = Entry.from_arrays("blk.0.ffn_up_exps.weight", sums2, counts)
    good = Entry.from_arrays(e.name, np.ones((3, 8), np.float32), counts)
    a = Imatrix(entries={e.name: e}, datasets=["a"], chunk_count=1, chunk_size=512)
    b = Imatrix(entries={e.name: good}, datasets=["b"], chunk_count=1, chunk_size=512)
    with pytest.raises(ImatrixError, match=r"blk.0.ffn_up_exps.weight has 1 non-finite values \(NaN or Inf\)"):
        compute_diff(a, b)
    assert compute_diff(b, b).tensors[0].js == 0.0


@pytest.mark.parametrize("fork", [True, False])
@pytest.mark.parametrize("meanwhile", [False, True])
def test_load_pair_equals_two_loads(fixtures, monkeypatch, fork, meanwhile):
    """`imatui diff` parses B in a forked process while A is parsed (and A too, in another, while it
    loads its compiled loops): the same Imatrix as load(b) (names, shapes, counts, data read through
    the entries afterwards)."""
    from imatui.formats import detect, load_pair

    monkeypatch.setattr(detect.threading, "active_count", lambda: 1)  # pytest's own threads aside
    ran = []
    forks = count_forks(monkeypatch)
    a, b = load_pair(fixtures / PROSE, fixtures / CODE, fork=fork,
                     meanwhile=(lambda: ran.append(1)) if meanwhile else None)
    assert ran == ([1] if meanwhile else [])
    assert len(forks) == (1 + meanwhile if fork else 0)
    for got, path in ((a, PROSE), (b, CODE)):
        want = load(fixtures / path)
        assert got.path == want.path and got.chunk_count == want.chunk_count and got.datasets == want.datasets
        assert list(got.entries) == list(want.entries)
        for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
            assert np.array_equal(np.asarray(got.entries[name].counts), np.asarray(want.entries[name].counts))
            assert np.array_equal(np.asarray(got.entries[name].sums2), np.asarray(want.entries[name].sums2))


def test_load_pair_errors_are_a_first_then_b(fixtures, tmp_path, monkeypatch):
    from imatui.formats import detect, load_pair

    monkeypatch.setattr(detect.threading, "active_count", lambda: 1)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ImatrixError, match="missing.gguf: no such file"):
        load_pair(missing, junk, fork=True)
    with pytest.raises(ImatrixError, match="junk.gguf"):
        load_pair(fixtures / PROSE, junk, fork=True)
    with pytest.raises(ImatrixError, match="missing.gguf: no such file"):
        load_pair(fixtures / PROSE, missing, fork=True)

    def fails() -> None:
        raise RuntimeError("meanwhile failed")

    # with work done meanwhile (A parsed in a forked process too): A's error, then B's, then its own
    with pytest.raises(ImatrixError, match="missing.gguf: no such file"):
        load_pair(missing, junk, fork=True, meanwhile=fails)
    with pytest.raises(ImatrixError, match="junk.gguf"):
        load_pair(fixtures / PROSE, junk, fork=True, meanwhile=fails)
    with pytest.raises(RuntimeError, match="meanwhile failed"):
        load_pair(fixtures / PROSE, fixtures / CODE, fork=True, meanwhile=fails)


def test_copies_are_compared_once_and_near_copies_apart(monkeypatch):
    """A tensor whose bytes repeat an earlier one's in both files (llama-imatrix writes attn_q/k/v and
    ffn_gate/up so) takes the earlier one's comparison without a second pass; one that only looks
    like a copy after pass 1 (the same counts, row sums and Σ: two values of a row swapped) is
    compared on its own. Both against the per-tensor code."""
    from imatui.stats import diff
    from tests.diff_reference import reference_row

    rng = np.random.default_rng(5)
    n_mat, n_in = 4, 96
    ca, cb = np.array([3.0, 0.0, 5.0, 7.0]), np.array([2.0, 4.0, 0.0, 6.0])
    sa = rng.integers(1, 50, (n_mat, n_in)).astype(np.float32) * ca[:, None]  # integers: exact sums in any order
    sb = rng.integers(1, 50, (n_mat, n_in)).astype(np.float32) * cb[:, None]
    near = sa.copy()
    near[0, [3, 70]] = near[0, [70, 3]]  # same row sums and Σ, other bytes
    assert near[0, 3] != near[0, 70]
    ea = {n: Entry.from_arrays(n, x, ca) for n, x in (("blk.0.attn_q.weight", sa), ("blk.0.attn_k.weight", sa.copy()),
                                                   ("blk.0.attn_v.weight", near))}
    eb = {n: Entry.from_arrays(n, sb.copy(), cb) for n in ea}
    a, b = Imatrix(entries=ea, chunk_count=1), Imatrix(entries=eb, chunk_count=1)
    passes = []
    real = diff._pass2
    monkeypatch.setattr(diff, "_pass2", lambda lays, *rest: passes.append(lays["a"].K) or real(lays, *rest))
    report = compute_diff(a, b)
    assert passes == [2]  # attn_k (first in name order) and attn_v; attn_q is attn_k's copy
    for t in report.tensors:
        with np.errstate(all="ignore"):
            r = reference_row(t.name, a.entries[t.name], b.entries[t.name])
        for f in ("sum_a", "sum_b", "reason", "experts_compared", "experts_skipped", "top_channel"):
            assert getattr(t, f) == getattr(r, f), (t.name, f)
        for f in ("cossim", "js", "top_value_a", "top_value_b", "top_share_delta"):
            assert getattr(t, f) == pytest.approx(getattr(r, f), rel=1e-12, abs=1e-12), (t.name, f)
    q, k, v = (report.tensor(f"blk.0.attn_{x}.weight") for x in "qkv")
    assert (q.cossim, q.js, q.top_channel) == (k.cossim, k.js, k.top_channel)
    assert v.js != k.js
    assert np.array_equal(report.expert_cos["blk.0.attn_q.weight"], report.expert_cos["blk.0.attn_k.weight"],
                          equal_nan=True)


def test_diff_without_a_writable_place_for_numbas_cache(tmp_path, monkeypatch):
    """Where numba finds nowhere to cache the compiled loops (a read-only install and no writable home:
    "no locator available", a RuntimeError when the module is imported), the diff compiles them in its
    process and prints the same numbers; no traceback."""
    import subprocess
    import sys

    fixtures = Path(__file__).parent / "fixtures"
    script = (
        "import sys, numba.core.caching as c\n"
        "c.CacheImpl._locator_classes = []  # as where no cache directory is writable\n"
        "from imatui.stats import diff\n"
        "diff.COMPILED_MIN_PAIRS = 0  # the compiled loops, small as the files are\n"
        "from imatui.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["diff", str(fixtures / PROSE), str(fixtures / CODE), "--format", "json"]
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    from imatui.stats import diff

    monkeypatch.setattr(diff, "COMPILED_MIN_PAIRS", 0)
    want = compute_diff(load(fixtures / PROSE), load(fixtures / CODE))
    rows = {t["name"]: t for t in got["tensors"]}
    assert len(rows) == len(want.tensors) == 210
    for w in want.tensors:
        g = rows[w.name]
        assert (g["cossim"], g["js"], g["top_channel"]) == (w.cossim, w.js, w.top_channel)  # the same loops


def test_a_small_diff_does_not_start_numba():
    """numba's start (~0.7 s) costs more than its loops save on small files (a dense model's imatrix):
    `imatui diff` of SmolLM2's files runs the compare pass in numpy and never imports numba."""
    import subprocess
    import sys

    from imatui.stats import diff

    fixtures = Path(__file__).parent / "fixtures"
    a, b = load(fixtures / PROSE), load(fixtures / CODE)
    assert not diff.worth_compiling(diff.compared_pairs(a, b))
    script = ("import sys\nfrom imatui.cli import main\nrc = main(sys.argv[1:])\n"
              "print('numba' in sys.modules, file=sys.stderr)\nsys.exit(rc)\n")
    run = subprocess.run([sys.executable, "-c", script, "diff", str(fixtures / PROSE), str(fixtures / CODE),
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr.strip() == "False", run.stderr
    assert len(json.loads(run.stdout)["tensors"]) == 210
