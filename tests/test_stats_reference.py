"""Every per-tensor and per-layer number must equal what llama-imatrix --show-statistics printed."""

import re

import pytest

from imatui.formats import load
from imatui.printers import format_table, tensor_row
from imatui.stats import compute_stats
from tests.conftest import FIXTURES, REFERENCE_FILES

ROW = re.compile(r"^\s*(\S+)\t(\S+)\s*\t")


def reference(name: str) -> tuple[list[str], list[str]]:
    """(tensor rows, layer rows) of the reference output, log noise removed."""
    lines = (FIXTURES / f"{name}.stats.txt").read_text().splitlines()
    rows, layers, section = [], [], None
    for line in lines:
        if line.startswith("Computing statistics"):
            section = "t"
        elif line.startswith("Computing weighted"):
            section = "l"
        elif line.startswith("=") or not line.strip() or "Layer" in line or section is None:
            continue
        elif section == "t":
            rows.append(line)
        else:
            layers.append(line)
    return rows, layers


def parse_row(line: str) -> list[float | str]:
    out: list[float | str] = []
    for cell in line.split("\t"):
        cell = cell.strip().rstrip("%")
        try:
            out.append(float(cell))
        except ValueError:
            out.append(cell)
    return out


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_every_tensor_row_matches_llama(name):
    report = compute_stats(load(FIXTURES / name))
    ref_rows, _ = reference(name)
    assert len(report.tensors) == len(ref_rows) == 210
    ours = [tensor_row(t) for t in report.tensors]
    # same rows in the same order, every column to the printed digit
    assert ours == ref_rows


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_every_layer_row_matches_llama(name):
    report = compute_stats(load(FIXTURES / name))
    _, ref_layers = reference(name)
    assert len(report.layers) == len(ref_layers) == 30
    for lay, line in zip(report.layers, ref_layers):
        layer, wsum, zd, cos = parse_row(line)
        assert lay.layer == layer
        assert f"{lay.sum:.2f}" == f"{wsum:.2f}"
        assert f"{100 * lay.zd:.4f}" == f"{zd:.4f}"
        assert f"{lay.cossim:.4f}" == f"{cos:.4f}"


def test_whole_table_is_llamas_text(prose):
    ours = format_table(compute_stats(load(prose)))
    ref = (FIXTURES / "smollm2-prose.imatrix.gguf.stats.txt").read_text()
    ours = ours.replace(str(prose), "smollm2-prose.imatrix.gguf")
    assert ours == ref


def test_known_values_spelled_out(prose):
    """A few rows written out by hand from the reference file, so a reader sees what is checked."""
    report = compute_stats(load(prose))
    t = report.tensor("blk.18.attn_k.weight")
    assert (round(t.sum, 2), round(t.min, 4), round(t.max, 4)) == (95.22, 0.0073, 51.2399)
    assert (round(t.mean, 2), round(t.std, 2), t.n) == (0.17, 2.14, 576)
    assert round(t.entropy, 4) == 4.5019 and round(100 * t.entropy_norm, 2) == 49.09
    assert round(100 * t.zd, 2) == 0.52 and round(t.cossim, 4) == 0.9993
    t0 = report.tensor("blk.0.attn_k.weight")
    assert round(100 * t0.active, 2) == 89.06 and t0.cossim == 0.0
    assert [round(x.sum, 2) for x in report.layers[11:12]] == [5840.10]


def test_dat_and_gguf_agree_everywhere(fixtures):
    a = compute_stats(load(fixtures / "smollm2-prose.imatrix.gguf"))
    b = compute_stats(load(fixtures / "smollm2-prose.imatrix.dat"))
    assert [tensor_row(t) for t in a.tensors] == [tensor_row(t) for t in b.tensors]
    assert b.format == "dat" and b.chunk_count == 40 and b.chunk_size == 512
