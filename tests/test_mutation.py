"""Damaged files, found by mutation, and the shapes the readers must refuse by name.

The seeded mutation run (benchmarks/mutate.py: bit flips in and out of the header, truncations,
duplicated and deleted spans, absurd header integers, NaN/Inf in the data) goes through the readers,
the statistics, the diff and the printers in a forked child with a memory cap and a timeout: each
case gives a result or an ImatrixError, never a traceback, a signal or a hang.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from imatui.cli import main as cli_main
from imatui.errors import CorruptError, ImatrixError
from imatui.formats import load
from imatui.stats import compute_stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import mutate  # noqa: E402

CASES = 240


def test_seeded_mutations_give_a_result_or_an_imatrix_error(tmp_path):
    counts, failures = mutate.run(CASES, seed=11, folder=tmp_path)
    assert [(name, what, outcome, detail[-600:]) for name, what, outcome, detail in failures] == []
    # both outcomes occur: damage that is caught, and damage that leaves a readable file
    assert counts["ok"] + counts["refused"] == CASES
    assert counts["ok"] > 10 and counts["refused"] > 100


def test_the_harness_sees_a_crash_and_a_hang(tmp_path, monkeypatch):
    """run_case itself: a child that raises something else is a traceback, one that sleeps a hang."""
    path = tmp_path / "x.gguf"
    path.write_bytes(b"")

    def boom(p, o):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(mutate, "_exercise", boom)
    outcome, detail = mutate.run_case(path, path)
    assert outcome == "traceback" and "ZeroDivisionError" in detail
    monkeypatch.setattr(mutate, "_exercise", lambda p, o: __import__("time").sleep(30))
    assert mutate.run_case(path, path, timeout=0.5)[0] == "hang"
    monkeypatch.setattr(mutate, "_exercise", lambda p, o: bytearray(4 << 30))  # past the memory cap
    assert mutate.run_case(path, path)[0] == "traceback"


def write_raw_imatrix(path: Path, tensors: list[tuple[str, np.ndarray]]) -> Path:
    """A GGUF imatrix with exactly these tensors (shapes as given), as llama-imatrix lays it out."""
    w = GGUFWriter(path, arch="")
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["x.txt"])
    w.add_uint32("imatrix.chunk_count", 2)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, a in tensors:
        w.add_tensor_info(name, a.shape, a.dtype, a.nbytes)
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, a in tensors:
        w.write_tensor_data(a)
    w.close()
    return path


GOOD = [("blk.0.attn_q.weight.in_sum2", np.ones(8, np.float32)),
        ("blk.0.attn_q.weight.counts", np.array([3], np.float32))]


def zero_length_file(path: Path) -> Path:
    """The file of issue 11: one in_sum2 with n_dims 1 and ne[0] = 0."""
    return write_raw_imatrix(path, GOOD + [("blk.0.ffn_down.weight.in_sum2", np.zeros(0, np.float32)),
                                           ("blk.0.ffn_down.weight.counts", np.array([3], np.float32))])


@pytest.mark.parametrize("case, tensors, words", [
    ("zero-length", [("blk.0.ffn_down.weight.in_sum2", np.zeros(0, np.float32)),
                     ("blk.0.ffn_down.weight.counts", np.array([3], np.float32))], "has no values"),
    ("zero-width rows", [("blk.0.ffn_down_exps.weight.in_sum2", np.zeros((4, 0), np.float32)),
                         ("blk.0.ffn_down_exps.weight.counts", np.ones((4, 1), np.float32))], "has no values"),
    ("rows disagree with counts", [("blk.0.ffn_down_exps.weight.in_sum2", np.ones((3, 8), np.float32)),
                                   ("blk.0.ffn_down_exps.weight.counts", np.ones((4, 1), np.float32))], "counts"),
    ("no counts", [("blk.0.ffn_down_exps.weight.counts", np.zeros((0, 1), np.float32)),
                   ("blk.0.ffn_down_exps.weight.in_sum2", np.ones((4, 8), np.float32))], "counts"),
])
def test_bad_shapes_are_refused_naming_file_and_tensor(tmp_path, capsys, case, tensors, words):
    path = write_raw_imatrix(tmp_path / "bad.imatrix.gguf", GOOD + tensors)
    tensor = tensors[0][0].rsplit(".", 1)[0]
    with pytest.raises(CorruptError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: tensor {tensor}") and words in str(info.value)
    for argv in (["stats", str(path)], ["diff", str(path), str(path), "--format", "table"]):
        assert cli_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"imatui: {info.value}\n"


def test_the_good_part_of_the_repro_file_is_fine(tmp_path):
    """The same file without the damaged tensor loads and gives its numbers (the test above refuses
    for the damaged tensor, not for the layout)."""
    path = write_raw_imatrix(tmp_path / "good.imatrix.gguf", GOOD)
    report = compute_stats(load(path))
    assert [t.name for t in report.tensors] == ["blk.0.attn_q.weight"]
    assert report.tensors[0].sum == pytest.approx(8 / 3)


def test_absurd_chunk_count_type_is_an_imatrix_error(tmp_path):
    w = GGUFWriter(tmp_path / "odd.gguf", arch="")
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["x.txt"])
    w.add_string("imatrix.chunk_count", "many")
    w.add_uint32("imatrix.chunk_size", 512)
    for name, a in GOOD:
        w.add_tensor_info(name, a.shape, a.dtype, a.nbytes)
    w.write_header_to_file(path=tmp_path / "odd.gguf")
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, a in GOOD:
        w.write_tensor_data(a)
    w.close()
    with pytest.raises(ImatrixError) as info:
        load(tmp_path / "odd.gguf")
    assert "imatrix.chunk_count" in str(info.value)
