"""The printers on their own: JSON and CSV field conventions, llama's row text, sorting, notes."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from imatui.formats import load
from imatui.imatrix import Entry, Imatrix
from imatui.printers import (CSV_FIELDS, SORT_KEYS, format_csv, format_json, format_layers_csv, format_table,
                             sort_tensors, tensor_row)
from imatui.stats import compute_stats
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def report():
    return compute_stats(load(FIXTURES / "smollm2-code.imatrix.gguf"))


def moe_report():
    rng = np.random.default_rng(2)
    a = Entry.from_arrays("blk.0.ffn_down_exps.weight", rng.random((3, 4), dtype=np.float32) * [[1], [1], [0]],
                          [5.0, 2.0, 0.0])
    b = Entry.from_arrays("blk.1.ffn_down_exps.weight", rng.random((3, 8), dtype=np.float32), [1.0, 1.0, 1.0])
    im = Imatrix(entries={a.name: a, b.name: b}, datasets=["x"], chunk_count=1, chunk_size=512)
    return compute_stats(im)


def test_tensor_row_is_llamas_text(report):
    ref = (FIXTURES / "smollm2-code.imatrix.gguf.stats.txt").read_text().splitlines()
    row = tensor_row(report.tensors[0])
    assert row in ref
    assert row.split("\t")[1].strip() == report.tensors[0].kind


def test_undefined_cossim_prints_blank():
    r = moe_report()
    t = r.tensor("blk.1.ffn_down_exps.weight")
    assert t.cossim is None  # blk 0 has 4 channels per expert, blk 1 has 8
    assert tensor_row(t).endswith("\t" + " " * 8)
    by_name = {x["name"]: x for x in json.loads(format_json(r))["tensors"]}
    assert by_name["blk.1.ffn_down_exps.weight"]["cossim"] is None
    assert by_name["blk.0.ffn_down_exps.weight"]["cossim"] == 0.0  # block 0: llama prints 0
    rows = {x["name"]: x for x in csv.DictReader(io.StringIO(format_csv(r)))}
    assert rows["blk.1.ffn_down_exps.weight"]["cossim"] == "" and rows["blk.0.ffn_down_exps.weight"]["cossim"] == "0.0"


def test_json_is_strict_json_and_complete(report):
    text = format_json(report)
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert d["skipped_matrices"] == 0 and d["skipped"] == [] and d["has_activations"] is False
    t = d["tensors"][0]
    assert t["top_channels"] and len(t["top_channels"]) == len(t["top_values"]) == 8
    assert t["top_values"] == sorted(t["top_values"], reverse=True)
    assert t["top_values"][0] == pytest.approx(t["max"])


def test_json_nan_becomes_null():
    from imatui.printers import _clean

    assert _clean({"a": [1.0, math.nan, math.inf], "b": {"c": -math.inf}}) == {"a": [1.0, None, None],
                                                                               "b": {"c": None}}


def test_csv_fields_and_values(report):
    rows = list(csv.reader(io.StringIO(format_csv(report))))
    assert rows[0] == CSV_FIELDS and len(rows) == 1 + len(report.tensors)
    first = dict(zip(rows[0], rows[1]))
    t = report.tensors[0]
    assert first["name"] == t.name and float(first["sum"]) == t.sum and int(first["n"]) == t.n
    assert first["top_channels"] == " ".join(str(i) for i in t.top_channels)
    assert first["experts_unused"] == "" and first["act_l2"] == ""  # dense, no in_sum


def test_csv_moe_fields():
    r = moe_report()
    rows = list(csv.DictReader(io.StringIO(format_csv(r))))
    first = next(x for x in rows if x["name"] == "blk.0.ffn_down_exps.weight")
    assert first["experts_unused"] == "1" and first["skipped_matrices"] == "1" and first["n_mat"] == "3"
    assert first["n"] == "8"


def test_layers_csv(report):
    rows = list(csv.DictReader(io.StringIO(format_layers_csv(report))))
    assert len(rows) == 30 and [int(r["layer"]) for r in rows] == list(range(30))
    assert all(int(r["n_tensors"]) == 7 for r in rows)


def test_sort_tensors(report):
    by_sum = sort_tensors(report.tensors, "sum")
    assert [t.sum for t in by_sum] == sorted((t.sum for t in report.tensors), reverse=True)
    assert [t.name for t in sort_tensors(report.tensors, "name")] == sorted(t.name for t in report.tensors)
    layers = [t.layer for t in sort_tensors(report.tensors, "layer")]
    assert layers == sorted(layers)
    assert sort_tensors(report.tensors, None) == report.tensors
    with pytest.raises(ValueError):
        sort_tensors(report.tensors, "bogus")
    assert set(SORT_KEYS) >= {"sum", "zd", "cossim", "entropy", "kurtosis", "dead", "layer", "name"}


def test_table_notes_skipped_matrices_and_tensors():
    r = moe_report()
    text = format_table(r)
    assert "note: 1 matrices with a zero count were skipped" in text
    assert "(2 tensors)" in text
