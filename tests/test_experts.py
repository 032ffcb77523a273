"""MoE data in numbers: llama-imatrix's statistics on the MoE fixtures, coverage, per-expert rows, diff.

The fixtures are llama-imatrix's own files for two tiny MoE models (../shared/fixtures/moe/README.md):
Qwen3-MoE (4 MoE blocks) and DeepSeek-V3 (block 0 dense, blocks 1-3 MoE with a shared expert),
16 experts each, 12 chunks of 512 tokens, top-2 routing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from imatui.cli import main
from imatui.errors import ImatrixError
from imatui.formats import load
from imatui.imatrix import Entry, Imatrix
from imatui.printers import format_coverage, format_expert_table, format_table
from imatui.stats import compute_stats
from imatui.stats.convergence import series_from_files
from imatui.stats.experts import (RareThreshold, chunks_to_reach, coverage, diff_experts, expert_stats,
                                  expert_table, slowest_experts, sort_experts)
from tests.stats_reference import _tensor_stats

MOE = Path(__file__).parent / "fixtures" / "moe"
QWEN = MOE / "qwen3moe-tiny.imatrix.gguf"
DEEPSEEK = MOE / "deepseekv3-tiny.imatrix.gguf"


@pytest.mark.parametrize("path", [QWEN, DEEPSEEK], ids=["qwen3moe", "deepseekv3"])
def test_stats_text_is_llamas_for_moe_files(path):
    """Every line llama-imatrix --show-statistics printed, in order; ours adds notes and the
    coverage section after them."""
    ours = format_table(compute_stats(load(path)), coverage=coverage(load(path)))
    ours = ours.replace(str(path), path.name)
    ref = (MOE / f"{path.name}.stats.txt").read_text()
    assert ours.startswith(ref.rstrip("\n") + "\n")
    rest = ours[len(ref.rstrip("\n")) + 1:]
    assert rest.lstrip("\n").startswith("note: ")
    assert "Expert coverage per layer" in rest


def test_moe_rows_spelled_out():
    """Two rows of the DeepSeek reference, by hand (a row over the live experts only)."""
    report = compute_stats(load(DEEPSEEK))
    t = report.tensor("blk.1.attn_k_b.weight")
    assert (round(t.sum, 2), round(t.min, 4), round(t.max, 4), t.n) == (66.08, 0.3631, 1.9485, 64)
    assert round(t.cossim, 4) == 0.8978
    up = report.tensor("blk.2.ffn_up_exps.weight")
    assert up.n == 13 * 64 and up.experts_unused == 3 and up.skipped_matrices == 3


def test_coverage_of_qwen3moe():
    cov = coverage(load(QWEN))
    assert [lay.layer for lay in cov.layers] == [0, 1, 2, 3]
    assert [lay.dead for lay in cov.layers] == [[3, 9], [0, 6, 11], [13], [4, 15]]  # the README's lists
    # 12 chunks x 512 tokens x top-2 over 16 experts: mean 768, rare below 76.8 tokens
    assert {lay.mean for lay in cov.layers} == {768.0}
    assert [lay.threshold for lay in cov.layers] == pytest.approx([76.8] * 4)
    assert [lay.rare for lay in cov.layers] == [[0, 12, 15], [2, 3, 13, 14], [5, 7, 11, 12, 15], [0, 8, 11, 12]]
    assert [lay.min_live for lay in cov.layers] == [3, 17, 1, 1]
    assert [lay.min_count for lay in cov.layers] == [0, 0, 0, 0]
    # blk.0 expert 0: 3 tokens in 12 chunks, 73.8 to go at 0.25 a chunk: 296 chunks
    assert [(lay.chunks_needed, lay.slowest) for lay in cov.layers] == [(296, 0), (43, 2), (910, 7), (910, 11)]
    assert (cov.dead, cov.rare, cov.n_experts) == (8, 16, 64)
    assert (cov.chunks_needed, cov.slowest) == (910, (2, 7))  # 1 token in 12 chunks: 75.8 * 12
    assert all(lay.kinds_agree and lay.shared == [] for lay in cov.layers)


def test_coverage_of_deepseek_with_shared_experts_and_absolute_threshold():
    im = load(DEEPSEEK)
    cov = coverage(im)
    assert [lay.layer for lay in cov.layers] == [1, 2, 3]  # block 0 is dense
    assert [lay.dead for lay in cov.layers] == [[2, 7], [0, 5, 9], [14]]
    assert [lay.rare for lay in cov.layers] == [[10], [13], [3, 8]]
    assert cov.layer(1).shared == ["blk.1.ffn_gate_shexp.weight", "blk.1.ffn_up_shexp.weight",
                                   "blk.1.ffn_down_shexp.weight"]
    assert (cov.chunks_needed, cov.slowest) == (142, (2, 13))  # 6 tokens: ceil(12 * 70.8 / 6)
    hundred = coverage(im, RareThreshold.parse("100"))
    assert [lay.rare for lay in hundred.layers] == [[10], [1, 13], [3, 8]]
    assert [lay.chunks_needed for lay in hundred.layers] == [48, 188, 160]  # 20 tokens: 12 * 80 / 20
    assert coverage(im, RareThreshold.parse("1%")).rare == 2  # below 7.68 tokens: 6 and 7


def test_threshold_parsing_and_scaling():
    assert RareThreshold.parse("25%") == RareThreshold(fraction=0.25)
    assert RareThreshold.parse("100").tokens == 100.0
    assert RareThreshold().label == "< 10% of the layer mean"
    assert RareThreshold(tokens=50).scaled(2).tokens == 100
    assert RareThreshold().scaled(0.5).fraction == pytest.approx(0.05)
    for bad in ("0%", "150%", "-3", "abc", "nan"):
        with pytest.raises(ImatrixError):
            RareThreshold.parse(bad)


def test_chunks_to_reach():
    out = chunks_to_reach(np.array([0.0, 1.0, 10.0, 100.0]), 50.0, 10)
    assert out[0] == math.inf and out[1] == 490 and out[2] == 40 and out[3] == 0
    assert np.isnan(chunks_to_reach(np.array([1.0]), 50.0, 0)).all()


def test_dense_file_has_no_expert_coverage(prose):
    cov = coverage(load(prose))
    assert not cov.is_moe and cov.layers == []
    assert "Expert coverage" not in format_table(compute_stats(load(prose)), coverage=cov)


def test_expert_rows_are_the_engine_on_each_row():
    im = load(QWEN)
    entry = im["blk.2.ffn_up_exps.weight"]
    rows = expert_table(entry)
    assert len(rows) == 16
    assert [r.expert for r in rows if r.status == "dead"] == [13]
    assert [r.expert for r in rows if r.status == "rare"] == [5, 7, 11, 12, 15]
    assert [r.tokens for r in rows] == [int(c) for c in entry.counts]
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert rows[3].share == pytest.approx(3485 / 12288)
    assert rows[13].stats is None
    # each row equals the stats engine on a one-matrix tensor of that expert's row
    ref, _, _ = _tensor_stats("x", entry.sums2[3:4], entry.counts[3:4], None, None, None)
    s = rows[3].stats
    assert (s.sum, s.min, s.max, s.std, s.entropy, s.zd, s.top_channels) == (
        ref.sum, ref.min, ref.max, ref.std, ref.entropy, ref.zd, ref.top_channels)
    assert s.n == 64 and s.cossim is None
    vals = entry.sums2[3].astype(np.float64) / entry.counts[3]
    assert s.sum == pytest.approx(vals.sum(), rel=1e-5)
    assert s.top_channels[0] == int(np.argmax(vals))
    assert expert_stats(entry, 13) is None


def test_expert_rows_sort():
    rows = expert_table(load(DEEPSEEK)["blk.2.ffn_up_exps.weight"])
    by_tokens = sort_experts(rows, "tokens")
    assert [r.expert for r in by_tokens[:5]] == [0, 5, 9, 13, 1]  # 0 0 0 6 86
    assert [r.expert for r in sort_experts(rows, "tokens", reverse=True)[:2]] == [11, 2]  # 2601 1227
    by_max = sort_experts(rows, "max")
    assert [r.expert for r in by_max[-3:]] == [0, 5, 9]  # dead: no value, last
    maxes = [r.stats.max for r in by_max[:-3]]
    assert maxes == sorted(maxes, reverse=True)
    with pytest.raises(ImatrixError):
        sort_experts(rows, "nope")
    text = format_expert_table("blk.2.ffn_up_exps.weight", by_tokens)
    lines = text.splitlines()
    assert lines[0] == "Experts of blk.2.ffn_up_exps.weight (16)"
    assert lines[4].split() == ["0", "0", "0.00%", "dead"]
    assert lines[7].split()[:4] == ["13", "6", "0.05%", "64.00"] and lines[7].endswith("rare")


def _changed_b(im: Imatrix, zero: int | None = None) -> tuple[Imatrix, Entry]:
    """B: expert 5 of blk.0's up tensor gets other channels, expert 9 (dead) gets tokens, expert 3
    loses them; expert `zero` keeps its tokens with all its values 0."""
    entries = dict(im.entries)
    e = im["blk.0.ffn_up_exps.weight"]
    sums2, counts = np.array(e.sums2), np.array(e.counts)
    sums2[5] = sums2[5][::-1]
    counts[9], sums2[9] = 100, 1.0
    counts[3], sums2[3] = 0, 0.0
    if zero is not None:
        sums2[zero] = 0.0
    entries[e.name] = Entry.from_arrays(e.name, sums2, counts)
    return Imatrix(entries=entries, chunk_count=im.chunk_count), e


def test_diff_per_expert_values():
    im = load(QWEN)
    b, e = _changed_b(im)
    diffs = {d.name: d for d in diff_experts(im, b)}
    assert len(diffs) == 12  # every expert tensor of the 4 blocks
    d = diffs[e.name]
    orig = e.sums2[5].astype(np.float64)
    want = float(orig @ orig[::-1] / (orig @ orig))
    assert d.experts[5].cossim == pytest.approx(want)
    assert d.min_expert == 5 and d.min_cossim == pytest.approx(want)
    assert d.experts[9].cossim is None and d.experts[3].cossim is None  # dead on one side
    assert d.dead_a == [3, 9] and d.dead_b == [3]
    assert d.experts[2].share_a == pytest.approx(3381 / 12288)
    assert d.experts[2].share_b == pytest.approx(3381 / (12288 + 100))
    assert all(x.cossim == pytest.approx(1.0) for x in diffs["blk.1.ffn_up_exps.weight"].experts
               if x.cossim is not None)
    assert diff_experts(load(Path(__file__).parent / "fixtures" / "smollm2-prose.imatrix.gguf"),
                        load(Path(__file__).parent / "fixtures" / "smollm2-code.imatrix.gguf")) == []


def test_diff_engine_gives_the_per_expert_cosines(monkeypatch, compare_path):
    """`imatui diff` takes each expert's cosine from the diff engine's passes (DiffReport.expert_cos)
    instead of reading every expert tensor again: the same experts, values to 1e-13, on small blocks
    and in rows narrower than a matrix (a matrix's rows add up across them)."""
    from imatui.stats import engine
    from imatui.stats.diff import compute_diff

    im = load(QWEN)
    b, e = _changed_b(im, zero=7)  # expert 7: live, but all zero in B: no cosine
    whole = diff_experts(im, b)
    for block, min_width in ((1 << 21, 256), (64, 4)):
        monkeypatch.setattr(engine, "BLOCK_ELEMENTS", block)
        monkeypatch.setattr(engine, "MIN_WIDTH", min_width)
        monkeypatch.setattr(engine, "SUB_ELEMENTS", 64)
        report = compute_diff(im, b)
        assert sorted(report.expert_cos) == sorted(d.name for d in whole)
        fast = diff_experts(im, b, expert_cos=report.expert_cos)
        assert [d.name for d in fast] == [d.name for d in whole]
        for x, y in zip(whole, fast):
            assert [v.cossim is None for v in x.experts] == [v.cossim is None for v in y.experts], x.name
            assert [v.cossim for v in y.experts] == pytest.approx([v.cossim for v in x.experts], rel=1e-13, abs=1e-13)
            assert (x.dead_a, x.dead_b, x.max_shift_expert) == (y.dead_a, y.dead_b, y.max_shift_expert)
            assert y.min_cossim == pytest.approx(x.min_cossim, rel=1e-13)  # (unchanged tensors: all 1 to an ulp)
        changed = fast[[d.name for d in fast].index(e.name)]
        assert changed.min_expert == 5 and changed.experts[7].cossim is None


def test_slowest_experts_between_checkpoints():
    prev = {1: np.array([10.0, 0.0, 5.0]), 2: np.array([3.0, 3.0, 3.0])}
    new = {1: np.array([30.0, 0.0, 6.0]), 2: np.array([4.0, 9.0, 3.0])}
    slow = slowest_experts(prev, new, 3)
    assert [(s.layer, s.expert, s.gained, s.tokens) for s in slow] == [(1, 1, 0, 0), (2, 2, 0, 3), (2, 0, 1, 4)]


def test_convergence_steps_name_the_slowest_experts(tmp_path):
    im = load(DEEPSEEK)
    from imatui.formats.write import save

    early = Imatrix(entries={n: Entry.from_arrays(n, e.sums2 / 2, np.floor(e.counts / 2))
                             for n, e in im.entries.items()}, chunk_count=6)
    save(early, tmp_path / "early.gguf")
    series = series_from_files([str(tmp_path / "early.gguf"), str(DEEPSEEK)])
    slow = series.steps[0].slowest_experts
    assert [(s.layer, s.expert, s.gained) for s in slow] == [(1, 2, 0), (1, 7, 0), (2, 0, 0), (2, 5, 0), (2, 9, 0)]


def test_cli_stats_sections(capsys):
    assert main(["stats", str(QWEN), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["experts"]["dead"], data["experts"]["rare"], data["experts"]["chunks_needed"]) == (8, 16, 910)
    assert data["experts"]["layers"][1]["dead"] == [0, 6, 11]
    assert main(["stats", str(DEEPSEEK), "--rare", "100"]) == 0
    out = capsys.readouterr().out
    assert "      2       16     3     2        0         6       768.0      100.0       188  0 5 9 | 1 13" in out
    assert "about 188 more chunks (slowest: blk.2 expert 13, 6 tokens in 12 chunks" in out
    assert main(["stats", str(DEEPSEEK), "--experts", "blk.3.ffn_down_exps.weight", "--expert-sort",
                 "tokens", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["experts"]
    assert [(r["expert"], r["tokens"], r["status"]) for r in rows[:3]] == [(14, 0, "dead"), (3, 7, "rare"),
                                                                         (8, 15, "rare")]
    assert main(["stats", str(DEEPSEEK), "--experts", "blk.3.ffn_down_exps.weight", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("expert,tokens,share,status,sum,")
    assert lines[1 + 14].startswith("14,0,0.0,dead,,,") and lines[1 + 3].startswith("3,7,")
    assert main(["stats", str(DEEPSEEK), "--rare", "0%"]) == 2
    assert main(["stats", str(DEEPSEEK), "--experts", "blk.0.attn_q_a.weight"]) == 2
    assert "not an expert tensor" in capsys.readouterr().err


def test_cli_diff_expert_section(capsys, tmp_path):
    im = load(QWEN)
    from imatui.formats.write import save

    half = Imatrix(entries={n: Entry.from_arrays(n, e.sums2, np.where(np.arange(e.n_mat) == 12, 0, e.counts)
                                                 if e.n_mat > 1 else e.counts)
                            for n, e in im.entries.items()}, chunk_count=12)
    save(half, tmp_path / "b.gguf")
    assert main(["diff", str(QWEN), str(tmp_path / "b.gguf"), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "Experts (12 MoE tensors" in out
    section = out[out.index("Experts (12 MoE tensors"):]
    line = next(x for x in section.splitlines() if x.startswith("blk.0.ffn_up_exps.weight"))
    # same rows, one more dead expert in B: every cosine 1, expert 12's 3 tokens leave the shares
    assert line.split()[1] == "1.0000" and line.split()[3] == "1.0000" and line.rstrip().endswith("12")
    assert main(["diff", str(QWEN), str(tmp_path / "b.gguf"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    up0 = next(x for x in data["experts"] if x["name"] == "blk.0.ffn_up_exps.weight")
    assert up0["dead_b"] == [3, 9, 12] and up0["experts"][12]["cossim"] is None


def test_coverage_section_text():
    text = format_coverage(coverage(load(QWEN)))
    assert "      1       16     3     4        0        17       768.0       76.8        43  0 6 11 | 2 3 13 14" in text


def test_bad_values_are_errors_not_silent_gaps():
    im = load(QWEN)
    e = im["blk.1.ffn_up_exps.weight"]
    sums2 = np.array(e.sums2)
    sums2[2, 3] = np.nan
    bad = Entry.from_arrays(e.name, sums2, e.counts)
    with pytest.raises(ImatrixError, match="non-finite"):
        diff_experts(im, Imatrix(entries={**im.entries, e.name: bad}, chunk_count=12))
    with pytest.raises(ImatrixError, match="non-finite"):
        expert_table(bad)
    counts = np.array(e.counts)
    counts[1] = np.nan
    with pytest.raises(ImatrixError, match="expert counts"):
        coverage(Imatrix(entries={**im.entries, e.name: Entry.from_arrays(e.name, e.sums2, counts)}))
