"""imatui plan with the real llama-quantize: probes read back, recipes obeyed, sizes predicted.

Skipped when no llama-quantize is found (IMATUI_LLAMA_QUANTIZE, else PATH).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from imatui.cli import main
from imatui.formats import load
from imatui.plan.measure import error_estimate, take_sample
from imatui.plan.model import read_model
from tests.conftest import FIXTURES

QUANTIZE = os.environ.get("IMATUI_LLAMA_QUANTIZE") or shutil.which("llama-quantize")
pytestmark = pytest.mark.skipif(not QUANTIZE, reason="llama-quantize not found (set IMATUI_LLAMA_QUANTIZE "
                                                      "or put it on PATH)")
MOE = FIXTURES / "moe"
DSV3 = MOE / "deepseekv3-tiny-slim-f16.gguf"
DSV3_IM = MOE / "deepseekv3-tiny.imatrix.gguf"


def _plan(capsys, *args) -> str:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_probes_read_back_the_real_types_and_the_recipe_gives_the_predicted_file(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    shutil.copy(DSV3, model)
    recipe = tmp_path / "recipe.txt"
    out = _plan(capsys, "plan", model, "--imatrix", DSV3_IM, "--bpw", "7", "-o", recipe,
                "--types", "Q4_K,IQ4_XS,Q8_0", "--llama-quantize", QUANTIZE)
    assert "measured: llama-quantize probes" in out
    cache = json.loads(next((tmp_path / ".imatui-plan").glob("m.*.json")).read_text())
    errors = cache["errors"]
    # rows of 64: K and IQ types fall back; rows of 16 (MLA attn_k_b heads) fit no block at all
    assert errors["blk.1.ffn_up_exps.weight"]["Q4_K"][0] == "Q5_0"
    assert errors["blk.1.ffn_up_exps.weight"]["IQ4_XS"][0] == "IQ4_NL"
    assert errors["blk.1.attn_k_b.weight"]["Q8_0"][0] == "F16"
    assert not list((tmp_path / ".imatui-plan").glob("*.gguf"))  # probes are removed once measured

    # Q8_0 ignores the imatrix: llama-quantize's bytes are gguf-py's, and so are the errors
    m, im = read_model(model), load(DSV3_IM)
    t = m.tensors["blk.2.ffn_down_exps.weight"]
    assert errors[t.name]["Q8_0"][1] == pytest.approx(error_estimate(take_sample(t, im), t, "Q8_0")[1], rel=1e-9)

    # llama-quantize obeys the recipe, and the file has the predicted size to the byte
    predicted = int(re.search(r"^plan\s+([\d,]+) bytes", out, re.M).group(1).replace(",", ""))
    target = tmp_path / "out.gguf"
    subprocess.run([QUANTIZE, "--imatrix", str(DSV3_IM), "--tensor-type-file", str(recipe), str(model),
                    str(target), "Q8_0"], check=True, capture_output=True)
    quant = read_model(target)
    wanted = dict(line.split("=") for line in recipe.read_text().split())
    assert {n: quant.tensors[n].type.lower() for n in wanted} == {n: t.lower() for n, t in wanted.items()}
    assert target.stat().st_size == predicted


def test_like_a_mix_takes_its_size(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    shutil.copy(DSV3, model)
    out = _plan(capsys, "plan", model, "--imatrix", DSV3_IM, "--like", "Q4_K_M", "-o", tmp_path / "r.txt",
                "--types", "Q4_K,Q5_K,Q6_K,Q8_0", "--llama-quantize", QUANTIZE)
    mix = int(re.search(r"^mix\s+llama-quantize's Q4_K_M: ([\d,]+) bytes", out, re.M).group(1).replace(",", ""))
    plan = int(re.search(r"^plan\s+([\d,]+) bytes", out, re.M).group(1).replace(",", ""))
    assert plan <= mix
    assert re.search(r"^budget\s+--like Q4_K_M: " + f"{mix:,}", out, re.M)
