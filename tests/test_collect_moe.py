"""imatui collect on the two tiny MoE fixtures (Qwen3-MoE, DeepSeek-V3) against llama-imatrix's own files.

tests/fixtures/moe/ holds the transformers folders (tar.gz, unpacked into a temporary folder), the
imatrix files llama-imatrix wrote from the same weights in F16 (prose.txt, --chunks 12 -c 512) and in
F32, and the head of prose.txt that those 12 chunks come from (it tokenizes to the same first 6144
tokens).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

pytest.importorskip("torch")
pytest.importorskip("transformers")

MOE = FIXTURES / "moe"
KINDS = ["qwen3moe", "deepseekv3"]
# experts llama-imatrix never routed a token to (the fixtures' README); the router is skewed on purpose
DEAD = {
    "qwen3moe": {0: {3, 9}, 1: {0, 6, 11}, 2: {13}, 3: {4, 15}},
    "deepseekv3": {1: {2, 7}, 2: {0, 5, 9}, 3: {14}},
}
N_TENSORS = {"qwen3moe": 32, "deepseekv3": 48}


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, **kw)
    return into / archive.name.removesuffix(".tar.gz")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The two transformers folders, unpacked once: {kind: folder}."""
    tmp = tmp_path_factory.mktemp("moe-hf")
    return {kind: _unpack(MOE / f"{kind}-tiny-hf.tar.gz", tmp) for kind in KINDS}


@pytest.fixture(scope="module")
def collected(folders, tmp_path_factory) -> dict[str, Path]:
    """Both fixtures collected once: {kind: output imatrix}."""
    from imatui.collect.run import main

    tmp = tmp_path_factory.mktemp("moe")
    out = {}
    for kind, folder in folders.items():
        target = tmp / f"{kind}.imatrix.gguf"
        rc = main([str(folder), "-f", str(MOE / "prose-head.txt"), "-o", str(target), "--chunks", "12",
                   "-c", "512", "--device", "cpu", "--dtype", "float32", "--quiet", "--no-ppl"])
        assert rc == 0
        out[kind] = target
    return out


def _pair(collected, kind):
    from imatui.formats import load

    return load(collected[kind], lazy=False), load(MOE / f"{kind}-tiny.imatrix.gguf", lazy=False)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.mark.parametrize("kind", KINDS)
def test_same_tensors_as_llama_imatrix(collected, kind):
    ours, ref = _pair(collected, kind)
    assert len(ref) == N_TENSORS[kind]
    assert ours.names() == ref.names()
    assert (ours.chunk_count, ours.chunk_size) == (12, 512)
    for name in ref.names():
        assert ours[name].shape == ref[name].shape, name
        if "_exps" in name:  # top-2 of 6144 tokens, a token here and there routed otherwise in F16
            assert ours[name].counts.sum() == ref[name].counts.sum() == 2 * 6144, name
            assert np.abs(ours[name].counts - ref[name].counts).max() <= 5, name
        else:
            assert ours[name].counts.tolist() == ref[name].counts.tolist() == [6144.0], name


@pytest.mark.parametrize("kind", KINDS)
def test_dead_experts_as_llama_imatrix(collected, kind):
    ours, ref = _pair(collected, kind)
    expert_tensors = [n for n in ref.names() if "_exps" in n]
    assert len(expert_tensors) == 3 * len(DEAD[kind])  # gate, up, down of every MoE block
    for name in expert_tensors:
        block = int(name.split(".")[1])
        dead_ours = set(np.flatnonzero(ours[name].counts.ravel() == 0).tolist())
        dead_ref = set(np.flatnonzero(ref[name].counts.ravel() == 0).tolist())
        assert dead_ours == dead_ref == DEAD[kind][block], name
        assert not ours[name].sums2[sorted(dead_ours)].any()  # a dead expert has no data at all


@pytest.mark.parametrize("kind", KINDS)
def test_in_sum2_as_llama_imatrix(collected, kind):
    ours, ref = _pair(collected, kind)
    cos = {name: _cosine(ours[name].sums2, ref[name].sums2) for name in ref.names()}
    values = np.array(list(cos.values()))
    assert np.median(values) >= 0.9999, np.median(values)
    assert values.min() >= 0.999, min(cos, key=cos.get)
    # measured (torch float32 against llama.cpp F16): median 1.0000000, min 0.999989 (an experts down)
    assert values.min() >= 0.99995, (values.min(), min(cos, key=cos.get))


def test_deepseek_mla_entries(collected):
    """attn_k_b / attn_v_b: 4 heads of 16 q_nope values and of 32 latent values, end to end, one count."""
    ours, ref = _pair(collected, "deepseekv3")
    for block in range(4):
        for kind, width in (("attn_k_b", 64), ("attn_v_b", 128)):
            name = f"blk.{block}.{kind}.weight"
            assert ours[name].shape == ref[name].shape == (1, width)
            assert _cosine(ours[name].sums2, ref[name].sums2) >= 0.99999, name
            # per head too: the heads are in llama's order
            per_head = ours[name].sums2.reshape(4, -1)
            for h, ref_head in enumerate(ref[name].sums2.reshape(4, -1)):
                assert _cosine(per_head[h], ref_head) >= 0.99999, (name, h)
        assert f"blk.{block}.attn_kv_b.weight" not in ours.names()


@pytest.mark.parametrize("kind", KINDS)
def test_same_as_llama_imatrix_in_float32(collected, kind):
    """Against llama-imatrix on the same model converted to F32, with an F32 KV cache and without flash
    attention (which casts K and V to F16): every count identical, every expert routed alike, sums
    within float rounding. attn_k_b / attn_v_b included: their inputs are llama.cpp's, not lookalikes."""
    from imatui.formats import load

    ours = load(collected[kind], lazy=False)
    ref = load(MOE / f"{kind}-tiny-f32.imatrix.gguf", lazy=False)
    assert ours.names() == ref.names()
    for name in ref.names():
        assert ours[name].counts.tolist() == ref[name].counts.tolist(), name
        scale = np.abs(ref[name].sums2).max()
        np.testing.assert_allclose(ours[name].sums2 / scale, ref[name].sums2 / scale, rtol=0, atol=5e-5,
                                   err_msg=name)  # measured: 1.1e-5 at most
        assert _cosine(ours[name].sums2, ref[name].sums2) >= 0.9999999, name


def test_attention_the_mla_inputs_cannot_use_is_one_line(folders, tmp_path, monkeypatch, capsys):
    from imatui.collect import mla
    from imatui.collect.run import main

    monkeypatch.setattr(mla, "SUPPORTED_IMPLEMENTATIONS", ("eager",))  # as if the model ran on another one
    out = tmp_path / "x.gguf"
    rc = main([str(folders["deepseekv3"]), "-f", str(MOE / "prose-head.txt"), "-o", str(out), "--chunks", "2",
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "attn_k_b and attn_v_b are collected with the sdpa or eager attention, not 'sdpa'" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("imatui: ")


# -- llama-quantize reads the file ---------------------------------------------------------------
def _llama_quantize() -> str:
    folder = os.environ.get("IMATUI_LLAMA_BIN")
    found = shutil.which("llama-quantize", path=folder) if folder else shutil.which("llama-quantize")
    if not found:
        pytest.skip("llama-quantize not found (put it on PATH or set IMATUI_LLAMA_BIN to its folder)")
    return found


def _f16_model(kind: str) -> Path:
    folder = os.environ.get("IMATUI_MOE_GGUF_DIR")
    path = Path(folder) / f"{kind}-tiny-f16.gguf" if folder else None
    if path is None or not path.is_file():
        pytest.skip(f"set IMATUI_MOE_GGUF_DIR to the folder holding {kind}-tiny-f16.gguf (the fixtures' "
                    "F16 model, too large to keep in the repository)")
    return path


def _quantize(tool: str, model: Path, imatrix: Path, out: Path) -> tuple[int, str]:
    run = subprocess.run([tool, "--imatrix", str(imatrix), str(model), str(out), "IQ4_NL"],
                         capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_llama_quantize_uses_every_entry(collected, kind, tmp_path):
    tool = _llama_quantize()
    model = _f16_model(kind)
    rc_ref, log_ref = _quantize(tool, model, MOE / f"{kind}-tiny.imatrix.gguf", tmp_path / "ref.gguf")
    rc, log = _quantize(tool, model, collected[kind], tmp_path / "ours.gguf")
    assert rc_ref == 0, log_ref[-2000:]
    assert rc == 0, log[-2000:]
    loaded = re.search(r"loaded (\d+) importance matrix entries", log)
    assert loaded and int(loaded.group(1)) == N_TENSORS[kind], log[-2000:]
    missing = set(re.findall(r"did not find weights for (\S+)", log))
    missing_ref = set(re.findall(r"did not find weights for (\S+)", log_ref))
    assert missing <= missing_ref, sorted(missing - missing_ref)
    assert "is different from tensor size" not in log
    assert len(missing_ref) == 1  # token_embd: a lookup, never a product, so never in an imatrix

    from gguf import GGUFReader

    def types(path):
        return {t.name: t.tensor_type for t in GGUFReader(path).tensors}

    assert types(tmp_path / "ours.gguf") == types(tmp_path / "ref.gguf")  # the same quantization mix
