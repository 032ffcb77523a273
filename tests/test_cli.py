"""The command line as a user and a script see it: imatui stats / convert / merge, exit codes, bytes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import imatui
from imatui.cli import main
from imatui.formats import load
from tests.conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
CODE = FIXTURES / "smollm2-code.imatrix.gguf"
MERGED = FIXTURES / "smollm2-merged.imatrix.gguf"
DAT = FIXTURES / "smollm2-prose.imatrix.dat"


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def prose_json() -> dict:
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["stats", str(PROSE), "--format", "json"]) == 0
    return json.loads(buf.getvalue())


# --- stats --format json ------------------------------------------------------------------------

def test_json_top_level(prose_json):
    d = prose_json
    assert d["file"] == str(PROSE)
    assert d["format"] == "gguf"
    assert (d["chunk_count"], d["chunk_size"]) == (40, 512)
    assert d["datasets"] == ["../calib/prose.txt"]
    assert len(d["tensors"]) == 210 and len(d["layers"]) == 30


def test_json_tensor_fields_and_types(prose_json):
    required = ["name", "layer", "kind", "sum", "min", "max", "mean", "std", "active", "n", "entropy",
                "entropy_norm", "zd", "cossim"]
    for t in prose_json["tensors"]:
        assert list(t)[: len(required)] == required  # stable order, extras follow
        assert isinstance(t["layer"], int) and 0 <= t["layer"] < 30
        for frac in ("active", "entropy_norm", "zd"):
            assert 0.0 <= t[frac] <= 1.0, (t["name"], frac, t[frac])
        assert isinstance(t["n"], int)
        assert t["cossim"] is None or -1.0 <= t["cossim"] <= 1.0
    kinds = {t["kind"] for t in prose_json["tensors"]}
    assert kinds == {"attn_k", "attn_q", "attn_v", "attn_output", "ffn_down", "ffn_gate", "ffn_up"}


def test_json_values_are_llamas(prose_json):
    """Rows of smollm2-prose.imatrix.gguf.stats.txt, written out."""
    by_name = {t["name"]: t for t in prose_json["tensors"]}
    t = by_name["blk.18.attn_k.weight"]
    assert (round(t["sum"], 2), round(t["min"], 4), round(t["max"], 4)) == (95.22, 0.0073, 51.2399)
    assert (round(t["mean"], 2), round(t["std"], 2), t["n"]) == (0.17, 2.14, 576)
    assert round(t["entropy"], 4) == 4.5019
    assert round(100 * t["entropy_norm"], 2) == 49.09 and round(100 * t["zd"], 2) == 0.52
    assert round(t["cossim"], 4) == 0.9993 and t["layer"] == 18 and t["kind"] == "attn_k"
    t0 = by_name["blk.0.attn_k.weight"]
    assert round(100 * t0["active"], 2) == 89.06 and t0["cossim"] == 0.0
    down = by_name["blk.29.ffn_down.weight"]
    assert down["n"] == 1536 and down["kind"] == "ffn_down"
    layer11 = prose_json["layers"][11]
    assert layer11["layer"] == 11 and round(layer11["sum"], 2) == 5840.10
    assert set(layer11) >= {"layer", "sum", "zd", "cossim"}


def test_json_layer_null_and_output_kind(capsys, tmp_path):
    from imatui.formats import save
    from imatui.imatrix import Entry, Imatrix

    e = Entry.from_arrays("output.weight", np.arange(1, 9, dtype=np.float32), [4.0])
    x = Entry.from_arrays("blk.0.ffn_down_exps.weight", np.ones((2, 4), np.float32), [2.0, 0.0])
    p = tmp_path / "o.gguf"
    save(Imatrix(entries={x.name: x, e.name: e}, datasets=["d"], chunk_count=1, chunk_size=4), p)
    rc, out, _ = cli(capsys, "stats", p, "--format", "json")
    assert rc == 0
    by = {t["name"]: t for t in json.loads(out)["tensors"]}
    assert by["output.weight"]["layer"] is None and by["output.weight"]["kind"] == "output"
    assert by["output.weight"]["sum"] == pytest.approx(36 / 4)
    moe = by["blk.0.ffn_down_exps.weight"]
    assert moe["kind"] == "ffn_down_exps" and moe["expert_counts"] == [2, 0] and moe["experts_unused"] == 1


# --- stats --format csv, sorting, layers -----------------------------------------------------------

def test_csv(capsys):
    rc, out, err = cli(capsys, "stats", PROSE, "--format", "csv")
    assert rc == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 210
    header = out.splitlines()[0].split(",")
    assert header[:14] == ["name", "layer", "kind", "sum", "min", "max", "mean", "std", "active", "n",
                           "entropy", "entropy_norm", "zd", "cossim"]
    r = next(r for r in rows if r["name"] == "blk.18.attn_k.weight")
    assert r["layer"] == "18" and r["kind"] == "attn_k" and r["n"] == "576"
    assert f"{float(r['sum']):.2f}" == "95.22" and f"{float(r['cossim']):.4f}" == "0.9993"
    assert 0 <= float(r["zd"]) <= 1 and f"{100 * float(r['zd']):.2f}" == "0.52"


def test_sort_and_reverse(capsys):
    _, out, _ = cli(capsys, "stats", PROSE, "--format", "csv", "--sort", "sum")
    sums = [float(r["sum"]) for r in csv.DictReader(io.StringIO(out))]
    assert sums == sorted(sums, reverse=True) and len(sums) == 210
    _, out, _ = cli(capsys, "stats", PROSE, "--format", "csv", "--sort", "sum", "--reverse")
    assert [float(r["sum"]) for r in csv.DictReader(io.StringIO(out))] == sorted(sums)
    _, out, _ = cli(capsys, "stats", PROSE, "--format", "csv", "--sort", "name")
    names = [r["name"] for r in csv.DictReader(io.StringIO(out))]
    assert names == sorted(names)
    # CosSim sorts ascending: the tensors that changed most from the block before come first
    _, out, _ = cli(capsys, "stats", PROSE, "--sort", "cossim")  # table
    rows = [line for line in out.splitlines() if line.startswith(" ") and "\t" in line and "Layer" not in line]
    cos = [float(line.split("\t")[12]) for line in rows[:210]]
    assert cos == sorted(cos) and cos[-1] == 0.9999
    _, out, _ = cli(capsys, "stats", PROSE, "--sort", "cossim", "--reverse")
    rows = [line for line in out.splitlines() if line.startswith(" ") and "\t" in line and "Layer" not in line]
    assert [float(line.split("\t")[12]) for line in rows[:210]] == sorted(cos, reverse=True)
    _, out, _ = cli(capsys, "stats", PROSE, "--format", "json", "--sort", "zd")
    zds = [t["zd"] for t in json.loads(out)["tensors"]]
    assert zds == sorted(zds, reverse=True)


def test_unknown_sort_column_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's exit, as a console script sees it
        main(["stats", str(PROSE), "--sort", "bogus"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == "" and err.count("\n") == 1 and err.startswith("imatui: ")
    assert "bogus" in err


def test_layers_table_and_csv(capsys):
    rc, out, _ = cli(capsys, "stats", PROSE, "--layers")
    assert rc == 0
    assert out.startswith("\nComputing weighted average statistics per layer (30 layers)")
    assert "attn_k" not in out
    ref = (FIXTURES / "smollm2-prose.imatrix.gguf.stats.txt").read_text()
    assert out.strip() == ref[ref.index("Computing weighted"):].strip()
    rc, out, _ = cli(capsys, "stats", PROSE, "--layers", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 30 and rows[11]["layer"] == "11" and f"{float(rows[11]['sum']):.2f}" == "5840.10"


def test_table_is_llamas_for_dat_too(capsys):
    rc, out, _ = cli(capsys, "stats", DAT)
    ref = (FIXTURES / "smollm2-prose.imatrix.dat.stats.txt").read_text()
    ref = ref.replace("gguf_init_from_reader: invalid magic characters: '????', expected 'GGUF'\n", "")  # llama's log
    assert rc == 0 and out.replace(str(DAT), "smollm2-prose.imatrix.dat") == ref


def test_stats_demo(capsys):
    rc, out, err = cli(capsys, "stats", "--demo")
    assert rc == 0 and err == ""
    assert "(210 tensors)" in out and "demo.imatrix.gguf" in out
    ref = (FIXTURES / "smollm2-prose.imatrix.gguf.stats.txt").read_text()
    assert out.split("\n", 3)[3] == ref.split("\n", 3)[3]  # the demo is the prose fixture


def test_stats_without_file(capsys):
    rc, _, err = cli(capsys, "stats")
    assert rc == 2 and err.count("\n") == 1


def test_version_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "imatui", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"imatui {imatui.__version__}"


def test_stats_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "imatui", "stats", str(PROSE), "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(json.loads(proc.stdout)["tensors"]) == 210


# --- convert and merge --------------------------------------------------------------------------

def test_convert_gguf_to_dat_is_llamas_file(capsys, tmp_path):
    out = tmp_path / "p.dat"
    rc, _, err = cli(capsys, "convert", PROSE, "-o", out)
    assert rc == 0 and "210 tensors" in err
    assert out.read_bytes() == DAT.read_bytes()  # llama-imatrix --output-format dat wrote the same bytes


def test_convert_round_trip(capsys, tmp_path):
    dat, gguf, dat2 = tmp_path / "a.dat", tmp_path / "b.gguf", tmp_path / "c.dat"
    assert cli(capsys, "convert", PROSE, "-o", dat)[0] == 0
    assert cli(capsys, "convert", dat, "-o", gguf)[0] == 0
    assert cli(capsys, "convert", gguf, "-o", dat2, "--format", "dat")[0] == 0
    assert dat2.read_bytes() == dat.read_bytes()
    orig, back = PROSE.read_bytes(), gguf.read_bytes()
    # the GGUF header (keys, tensor names, shapes, offsets) is llama's byte for byte...
    assert len(back) == len(orig) and back[:25600] == orig[:25600]
    # ...and the numbers survive the trip through means x ncall to float32 rounding
    a, b = load(PROSE), load(gguf)
    for name in a.names():
        np.testing.assert_allclose(b[name].sums2, a[name].sums2, rtol=2e-7)
        assert np.array_equal(b[name].counts, a[name].counts)


def test_legacy_named_gguf_opens(capsys, tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(DAT.read_bytes())
    rc, out, _ = cli(capsys, "stats", p, "--format", "json")
    assert rc == 0 and json.loads(out)["format"] == "dat"
    assert len(json.loads(out)["tensors"]) == 210


def test_merge_equals_llamas_merge(capsys, tmp_path):
    out = tmp_path / "m.gguf"
    rc, _, err = cli(capsys, "merge", PROSE, CODE, "-o", out)
    assert rc == 0 and "2 datasets" in err
    assert out.read_bytes() == MERGED.read_bytes()


def test_merge_needs_two_files(capsys, tmp_path):
    rc, _, err = cli(capsys, "merge", PROSE, "-o", tmp_path / "m.gguf")
    assert rc == 2 and err.count("\n") == 1
    assert not (tmp_path / "m.gguf").exists()


def test_merge_of_different_models_is_refused(capsys, tmp_path):
    from imatui.formats import save
    from imatui.imatrix import Entry, Imatrix

    e = Entry.from_arrays("blk.0.attn_k.weight", np.ones(8, np.float32), [1.0])
    other = tmp_path / "other.gguf"
    save(Imatrix(entries={e.name: e}, datasets=["x"], chunk_count=1, chunk_size=512), other)
    rc, _, err = cli(capsys, "merge", PROSE, other, "-o", tmp_path / "m.gguf")
    assert rc == 2 and "blk.0.attn_k.weight" in err and err.count("\n") == 1
