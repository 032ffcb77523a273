"""imatui plan / check / plan --from / diff of models: solver, error measure, recipes, bad input.

No llama.cpp binary is needed: models are written with gguf-py here, the MoE fixtures are slim
copies (tests/plan_fixtures.py), and the probes without llama-quantize are gguf-py's estimates.
The tests that run llama-quantize skip when it is absent (tests/test_plan_llama.py).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from imatui.cli import main
from imatui.formats import load, save
from imatui.imatrix import Entry, Imatrix
from imatui.plan import probe
from imatui.plan.check import check
from imatui.plan.measure import importance, weighted_error
from imatui.plan.model import read_model
from imatui.plan.qtypes import ggml_name, real_type, row_bytes
from imatui.plan.recipe import custom_q_rules, tensor_type_lines
from imatui.plan.solver import InfeasibleBudget, Option, dynamic_programme, lower_hull, solve
from tests.conftest import FIXTURES
from tests.plan_fixtures import write_model

MOE = FIXTURES / "moe"
QWEN = MOE / "qwen3moe-tiny-slim-f16.gguf"
QWEN_IM = MOE / "qwen3moe-tiny.imatrix.gguf"
DSV3 = MOE / "deepseekv3-tiny-slim-f16.gguf"
DSV3_IM = MOE / "deepseekv3-tiny.imatrix.gguf"
SMOL_IM = FIXTURES / "smollm2-prose.imatrix.gguf"


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_quantizer(monkeypatch):
    """Plans here use gguf-py's estimates even where llama-quantize is on PATH."""
    monkeypatch.setattr(probe.shutil, "which", lambda name: None)


# --- solver -------------------------------------------------------------------------------------

def _brute(items, budget):
    best = None
    for choice in itertools.product(*[range(len(it)) for it in items]):
        b = sum(items[k][c].bytes for k, c in enumerate(choice))
        e = sum(items[k][c].error for k, c in enumerate(choice))
        if b <= budget and (best is None or e < best):
            best = e
    return best


def test_lower_hull_drops_dominated_and_concave_points():
    opts = [Option("a", 10, 1.0), Option("b", 20, 0.7), Option("c", 30, 0.2), Option("d", 40, 0.25),
            Option("e", 50, 0.0), Option("f", 20, 0.9)]
    # b lies above the a-c segment (0.6 at 20), d costs more than c and saves nothing
    assert lower_hull(opts) == [0, 2, 4]


def test_solver_hand_case_where_the_hull_sweep_alone_is_not_optimal():
    # the sweep buys A's cheap step first (best rate), then B's big step no longer fits;
    # the optimum skips A's step and takes B's
    items = [[Option("a0", 1, 1.0), Option("a1", 2, 0.5)],
             [Option("b0", 1, 1.0), Option("b1", 4, 0.0)]]
    assert solve(items, 5) == [0, 1]
    assert _brute(items, 5) == 1.0


def test_solver_equals_brute_force_on_random_small_cases():
    rng = random.Random(13)
    for _ in range(150):
        items = [[Option(str(i), rng.randint(1, 25), rng.random()) for i in range(rng.randint(1, 4))]
                 for _ in range(rng.randint(1, 5))]
        lo = sum(min(o.bytes for o in it) for it in items)
        hi = sum(max(o.bytes for o in it) for it in items)
        budget = rng.randint(lo, hi)
        choice = solve(items, budget)
        assert sum(items[k][c].bytes for k, c in enumerate(choice)) <= budget
        assert sum(items[k][c].error for k, c in enumerate(choice)) == pytest.approx(_brute(items, budget), abs=1e-12)


def test_solver_refuses_a_budget_below_the_minimum():
    items = [[Option("a", 10, 1.0), Option("b", 20, 0.0)], [Option("c", 7, 0.0)]]
    with pytest.raises(InfeasibleBudget) as exc:
        solve(items, 16)
    assert exc.value.minimum == 17


def test_dynamic_programme_rounds_bytes_up_so_its_answer_always_fits():
    items = [[Option("a", 1001, 1.0), Option("b", 1999, 0.0)]] * 3
    choice = dynamic_programme(items, 5000)
    assert sum(items[k][c].bytes for k, c in enumerate(choice)) <= 5000


# --- types and errors ---------------------------------------------------------------------------

def test_llama_quantize_fallbacks_for_rows_not_a_multiple_of_256():
    assert [real_type(t, 576) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ4_XS", "Q8_0")] == \
        ["Q4_0", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_NL", "Q8_0"]
    assert real_type("Q4_K", 1536) == "Q4_K"
    assert real_type("Q4_0", 48) == "F16"  # not even a multiple of 32
    assert row_bytes("Q4_K", 1536) == 6 * 144 and row_bytes("Q8_0", 576) == 18 * 34


def test_weighted_error_by_hand():
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    w_hat = np.array([[1.0, 1.0], [3.0, 5.0]])
    imp = np.array([[1.0, 3.0], [1.0, 3.0]])
    # Σ imp (w-ŵ)² = 3·1 + 3·1 = 6; Σ imp w² = 1 + 12 + 9 + 48 = 70
    assert weighted_error(w, w_hat, imp) == pytest.approx(6 / 70)
    assert weighted_error(w, w_hat, None) == pytest.approx(2 / 30)


def test_importance_of_experts_and_mla_heads():
    model = read_model(DSV3)
    im = load(DSV3_IM)
    exps = importance(model.tensors["blk.1.ffn_up_exps.weight"], im)
    e = im["blk.1.ffn_up_exps.weight"]
    assert exps.shape == (16, 64)
    assert np.allclose(exps[0], e.sums2[0] / e.counts[0])
    live = [i for i in range(16) if i not in (2, 7)]  # experts 2 and 7 saw no token
    assert np.allclose(exps[2], np.mean([e.sums2[i] / e.counts[i] for i in live], axis=0))
    # attn_k_b: 4 heads of 16 inputs, one entry of 64 values with one count
    kb = importance(model.tensors["blk.1.attn_k_b.weight"], im)
    ent = im["blk.1.attn_k_b.weight"]
    assert kb.shape == (4, 16)
    assert np.allclose(kb.reshape(-1), ent.sums2[0] / ent.counts[0])
    assert importance(model.tensors["token_embd.weight"], im) is None


# --- recipes ------------------------------------------------------------------------------------

def test_tensor_type_lines_longest_first_and_anchored_where_a_name_would_catch_another():
    names = ["output.weight", "blk.0.attn_output.weight", "blk.1.ffn_up.weight", "blk.11.ffn_up.weight"]
    types = {n: "Q4_K" for n in names}
    assert tensor_type_lines(types, names) == [
        "blk.0.attn_output.weight=q4_K", "blk.11.ffn_up.weight=q4_K", "blk.1.ffn_up.weight=q4_K",
        "output.weight=q4_K"]
    # only output.weight is named: as a plain regex it would catch blk.0.attn_output.weight
    assert tensor_type_lines({"output.weight": "Q6_K"}, names) == [r"^output\.weight$=q6_K"]
    assert custom_q_rules({"blk.0.ffn_up.weight": "IQ4_NL"}) == [r"^blk\.0\.ffn_up\.weight$=iq4_nl"]


def _tiny_model(tmp_path: Path, name="m.gguf", types=None, extra=None) -> Path:
    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": rng.standard_normal((64, 256)),
        "blk.0.attn_norm.weight": np.ones(256),
        "blk.0.attn_q.weight": rng.standard_normal((256, 256)),
        "blk.0.ffn_down.weight": rng.standard_normal((256, 512)) * np.linspace(0.1, 2, 512),
        "blk.1.attn_q.weight": rng.standard_normal((256, 256)),
        "output_norm.weight": np.ones(256),
    }
    return write_model(tmp_path / name, tensors, types=types, extra=extra)


def _tiny_imatrix(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    entries = {
        "blk.0.attn_q.weight": Entry.from_arrays("blk.0.attn_q.weight", rng.random(256) * 100, [50]),
        "blk.0.ffn_down.weight": Entry.from_arrays("blk.0.ffn_down.weight", rng.random(512) ** 4 * 100, [50]),
        "blk.1.attn_q.weight": Entry.from_arrays("blk.1.attn_q.weight", rng.random(256) * 100, [50]),
    }
    im = Imatrix(entries=entries, datasets=["prose.txt"], chunk_count=1, chunk_size=50)
    return save(im, tmp_path / "tiny.imatrix.gguf")


def test_plan_estimates_end_to_end_equals_brute_force(tmp_path, capsys, no_quantizer):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    recipe = tmp_path / "recipe.txt"
    rc, out, err = cli(capsys, "plan", model, "--imatrix", im, "--bpw", "6", "-o", recipe)
    assert rc == 0, err
    assert "ESTIMATES (no llama-quantize)" in out
    lines = recipe.read_text().splitlines()
    assert [ln.split("=")[0] for ln in lines] == ["blk.0.ffn_down.weight", "blk.0.attn_q.weight",
                                                  "blk.1.attn_q.weight", "token_embd.weight"]
    chosen = dict(ln.split("=") for ln in lines)
    # the same choice by brute force over the cached errors
    cache = json.loads(next((tmp_path / ".imatui-plan").glob("m.*.json")).read_text())
    assert cache["source"] == "gguf-py"
    m = read_model(model)
    names = list(chosen)
    options = []
    for n in names:
        t = m.tensors[n]
        opts = {}
        for real, err_ in cache["errors"][n].values():
            opts[real] = err_
        # token_embd makes the logits here (no output.weight): its error counts once per block (2)
        scale = 2.0 if n == "token_embd.weight" else 1.0
        options.append([(r, t.n_rows * row_bytes(r, t.n_per_row), e * scale) for r, e in sorted(opts.items())])
    fixed = 256 * 4 * 2  # the two norms stay F32
    budget = int(6 * m.n_elements / 8) - fixed
    best = min((sum(o[2] for o in combo), combo) for combo in itertools.product(*options)
               if sum(o[1] for o in combo) <= budget)
    assert {n: o[0].lower() for n, o in zip(names, best[1])} == {n: t.lower() for n, t in chosen.items()}
    # the printed command runs llama-quantize with that file
    assert f"--tensor-type-file {recipe}" in out and "per layer" in out
    assert "token_embd.weight makes the logits (tied embeddings): its error counts 2×" in out


def test_plan_at_the_minimum_is_all_q4_0_and_cached(tmp_path, capsys, no_quantizer):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    recipe = tmp_path / "r.txt"
    m = read_model(model)
    smallest = sum(t.n_rows * row_bytes("Q4_0", t.n_per_row) for t in m.tensors.values() if t.quantizable)
    bpw = (smallest + 2 * 1024) * 8 / m.n_elements
    rc, out, err = cli(capsys, "plan", model, "--imatrix", im, "--bpw", f"{bpw + 1e-6:.7f}", "-o", recipe)
    assert rc == 0, err
    assert recipe.read_bytes() == (b"blk.0.ffn_down.weight=q4_0\nblk.0.attn_q.weight=q4_0\n"
                                   b"blk.1.attn_q.weight=q4_0\ntoken_embd.weight=q4_0\n")
    cache = next((tmp_path / ".imatui-plan").glob("m.*.json"))
    stamp = cache.stat().st_mtime_ns
    rc, out, _ = cli(capsys, "plan", model, "--imatrix", im, "--bpw", "17", "-o", recipe, "--force")
    assert rc == 0
    assert cache.stat().st_mtime_ns == stamp  # planning again measured nothing
    assert set(recipe.read_text().split()) == {f"{n}=f16" for n in
                                               ("blk.0.ffn_down.weight", "blk.0.attn_q.weight",
                                                "blk.1.attn_q.weight", "token_embd.weight")}


def test_custom_q_file(tmp_path, capsys, no_quantizer):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    rc, out, _ = cli(capsys, "plan", model, "--imatrix", im, "--bpw", "17", "-o", tmp_path / "r.txt",
                     "--custom-q", tmp_path / "r.customq")
    assert rc == 0
    assert (tmp_path / "r.customq").read_text() == (
        r"^blk\.0\.attn_q\.weight$=f16,^blk\.0\.ffn_down\.weight$=f16,^blk\.1\.attn_q\.weight$=f16,"
        r"^token_embd\.weight$=f16" + "\n")
    assert "--custom-q" in out


# --- plan --from and diff of two models -----------------------------------------------------------

def _quant_model(tmp_path: Path, name: str, down: str) -> Path:
    extra = {"quantize.imatrix.file": "prose.imatrix.gguf", "quantize.imatrix.chunks_count": 40,
             "quantize.imatrix.entries_count": 3, "general.file_type": 7}
    return _tiny_model(tmp_path, name, types={"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_0",
                                              "blk.0.ffn_down.weight": down, "blk.1.attn_q.weight": "Q5_1"},
                       extra=extra)


def test_plan_from_a_quantized_gguf(tmp_path, capsys):
    quant = _quant_model(tmp_path, "q.gguf", "Q5_0")
    recipe = tmp_path / "from.txt"
    rc, out, err = cli(capsys, "plan", "--from", quant, "-o", recipe)
    assert rc == 0, err
    assert recipe.read_bytes() == (b"blk.0.ffn_down.weight=q5_0\nblk.0.attn_q.weight=q4_0\n"
                                   b"blk.1.attn_q.weight=q5_1\ntoken_embd.weight=q8_0\n")
    assert "quantize.imatrix.file = prose.imatrix.gguf" in out
    assert "quantize.imatrix.chunks_count = 40" in out
    assert "general.file_type 7" in out


def test_diff_of_two_quantized_models(tmp_path, capsys):
    a = _quant_model(tmp_path, "a.gguf", "Q5_0")
    b = _quant_model(tmp_path, "b.gguf", "Q8_0")
    rc, out, err = cli(capsys, "diff", a, b)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["blk.0.ffn_down.weight", "q5_0", "q8_0"]
    assert lines[-1].startswith("1 tensors differ")
    rc, out, _ = cli(capsys, "diff", a, a)
    assert "every tensor has the same type" in out


def test_a_model_is_told_from_an_imatrix_by_its_first_megabyte(tmp_path):
    """`imatui diff` starts numba's compiled loops while the headers are parsed, unless A is a model
    (a diff of two models compares tensor types, no loops)."""
    from imatui.formats.detect import is_gguf_model

    assert is_gguf_model(QWEN) and is_gguf_model(_quant_model(tmp_path, "a.gguf", "Q5_0"))
    assert not is_gguf_model(QWEN_IM)
    assert not is_gguf_model(tmp_path / "missing.gguf")
    (tmp_path / "legacy.dat").write_bytes(b"\x01\x00\x00\x00")
    assert not is_gguf_model(tmp_path / "legacy.dat")


# --- check -----------------------------------------------------------------------------------------

def test_check_qwen3moe_fixture(capsys):
    report = check(read_model(QWEN), load(QWEN_IM))
    topics = {f.topic: f for f in report.findings}
    assert set(topics) == {"lookup", "dead-experts", "chunk-size"}
    assert topics["dead-experts"].tensors == [
        f"blk.{b}.ffn_{k}_exps.weight {ids}" for b, ids in ((0, [3, 9]), (1, [0, 6, 11]), (2, [13]), (3, [4, 15]))
        for k in ("down", "gate", "up")]
    assert (report.n_weights, report.n_matched) == (29, 28)
    assert report.refusing_types() == []
    rc, out, _ = cli(capsys, "check", QWEN, QWEN_IM)
    assert rc == 0
    assert "28 of 29 quantizable weights have an imatrix entry" in out
    assert "chunks of 512 tokens; the model's context is 4096" in out


def test_check_deepseek_fixture_and_its_mla_problems(tmp_path, capsys):
    model = read_model(DSV3)
    im = load(DSV3_IM)
    report = check(model, im)
    assert {f.topic for f in report.findings} == {"lookup", "dead-experts", "chunk-size"}
    assert report.findings[1].tensors[:3] == [f"blk.1.ffn_{k}_exps.weight [2, 7]" for k in ("down", "gate", "up")]
    # the same data under the names an older collector gives: "(reshaped)" and a joint attn_kv_b
    entries = {}
    for n, e in im.materialize().entries.items():
        if "attn_k_b" in n:
            n = n + " (reshaped)"
        elif "attn_v_b" in n:
            n = n.replace("attn_v_b", "attn_kv_b")
        entries[n] = Entry(name=n, shape=e.shape, counts=e.counts, _sums2=e.sums2)
    renamed = save(Imatrix(entries=entries, datasets=im.datasets, chunk_count=im.chunk_count,
                           chunk_size=im.chunk_size), tmp_path / "renamed.imatrix.gguf")
    report = check(model, load(renamed))
    topics = {f.topic: f for f in report.findings}
    assert topics["suffixed-name"].tensors == [f"blk.{b}.attn_k_b.weight (reshaped)" for b in range(4)]
    assert topics["mla-split"].tensors == [f"blk.{b}.attn_kv_b.weight" for b in range(4)]
    assert topics["mla-missing"].tensors == [f"blk.{b}.attn_{k}_b.weight" for b in range(4) for k in ("k", "v")]
    assert report.refusing_types() == ["IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"]
    rc, out, _ = cli(capsys, "check", DSV3, renamed)
    assert rc == 0  # llama-quantize runs (without data there) unless a type needs it
    assert "types that would refuse to run: iq3_xxs, iq2_xxs, iq2_xs, iq2_s, iq1_m, iq1_s" in out


def test_check_imatrix_of_another_model(capsys):
    rc, out, _ = cli(capsys, "check", DSV3, SMOL_IM)
    assert rc == 1
    assert "the imatrix does not belong to this model: only 7 of its 210 entries" in out
    assert ("blk.0.ffn_down.weight: the imatrix has 1536 values (1×1536), the weight needs 128" in out)
    assert "llama-quantize would abort" in out


def test_check_nextn_weights(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"blk.0.attn_q.weight": rng.standard_normal((32, 64)),
               "blk.1.nextn.eh_proj.weight": rng.standard_normal((64, 128))}
    model = write_model(tmp_path / "mtp.gguf", tensors, extra={"llama.block_count": 2,
                                                               "llama.nextn_predict_layers": 1})
    im = Imatrix(entries={"blk.0.attn_q.weight": Entry.from_arrays("blk.0.attn_q.weight", np.ones(64), [10])},
                 datasets=["x"], chunk_count=1, chunk_size=10)
    report = check(read_model(model), im)
    nextn = [f for f in report.findings if f.topic == "nextn"]
    assert nextn and nextn[0].tensors == ["blk.1.nextn.eh_proj.weight"]


# --- bad input: one line, exit 2, no recipe left -----------------------------------------------------

def _assert_refused(rc, out, err, recipe: Path, *words):
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("imatui: ") and "Traceback" not in err
    for w in words:
        assert w in err, err
    assert not recipe.exists()
    assert not list(recipe.parent.glob(f".{recipe.name}.*"))  # no temporary file either


def test_bad_inputs(tmp_path, capsys, no_quantizer):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    quant = _quant_model(tmp_path, "q.gguf", "Q5_0")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    recipe = tmp_path / "recipe.txt"
    cases = [
        (("plan", quant, "--imatrix", im, "--bpw", "5"), ("already quantized", "Q4_0", "F32/F16/BF16")),
        (("plan", im, "--imatrix", im, "--bpw", "5"), ("not a model GGUF", "imatrix file")),
        (("plan", text, "--imatrix", im, "--bpw", "5"), ("not a GGUF file",)),
        (("plan", tmp_path / "missing.gguf", "--imatrix", im, "--bpw", "5"), ("no such file",)),
        (("plan", DSV3, "--imatrix", SMOL_IM, "--bpw", "5"), ("does not belong to this model",)),
        (("plan", model, "--imatrix", im, "--bpw", "2"), ("below the smallest plan", "4.5")),
        (("plan", model, "--imatrix", im, "--size", "10K"), ("below the smallest plan",)),
        (("plan", model, "--imatrix", im, "--size", "ten"), ("--size 'ten'",)),
        (("plan", model, "--imatrix", im, "--like", "Q3_K_M"), ("--like needs llama-quantize",)),
        (("plan", model, "--imatrix", im, "--like", "Q9_K"), ("not a llama-quantize mix",)),
        (("plan", model, "--imatrix", im, "--bpw", "5", "--llama-quantize", tmp_path / "nope"),
         ("--llama-quantize", "not an executable")),
        (("plan", model, "--imatrix", text, "--bpw", "5"), ("notes.txt",)),
        (("plan", model, "--bpw", "5"), ("--imatrix",)),
        (("plan", model, "--imatrix", im), ("budget",)),
    ]
    for args, words in cases:
        rc, out, err = cli(capsys, *args, "-o", recipe)
        _assert_refused(rc, out, err, recipe, *words)


def test_failing_llama_quantize(tmp_path, capsys):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    fake = tmp_path / "llama-quantize"
    fake.write_text("#!/bin/sh\necho 'main: build = 1'\necho 'llama_model_quantize: failed to quantize: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    recipe = tmp_path / "recipe.txt"
    rc, out, err = cli(capsys, "plan", model, "--imatrix", im, "--bpw", "5", "-o", recipe, "--llama-quantize", fake)
    _assert_refused(rc, out, err, recipe, "llama-quantize failed on the Q2_K probe", "boom")


def test_existing_recipe_is_not_replaced_unasked(tmp_path, capsys, no_quantizer):
    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    recipe = tmp_path / "recipe.txt"
    recipe.write_text("mine\n")
    rc, out, err = cli(capsys, "plan", model, "--imatrix", im, "--bpw", "5", "-o", recipe)
    assert rc == 2 and "already exists (use --force" in err and len(err.splitlines()) == 1
    assert recipe.read_text() == "mine\n"
    assert not (tmp_path / ".imatui-plan").exists()  # refused before measuring anything


# --- the plan screen -------------------------------------------------------------------------------

async def test_plan_screen_budget_keys_and_write(tmp_path, no_quantizer):
    from textual.widgets import DataTable, Sparkline, Static

    from imatui.tui.screens.plan import PlanApp, PlanScreen

    model, im = _tiny_model(tmp_path), _tiny_imatrix(tmp_path)
    recipe = tmp_path / "recipe.txt"
    m = read_model(model)
    smallest = sum(t.n_rows * row_bytes("Q4_0", t.n_per_row) for t in m.tensors.values() if t.quantizable)
    bpw = round((smallest + 2 * 1024) * 8 / m.n_elements + 0.001, 3)
    screen = PlanScreen(model, im, recipe_path=recipe, bpw=bpw)
    app = PlanApp(screen)
    async with app.run_test(size=(120, 30)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if screen.plan is not None:
                break
        table = screen.query_one("#plan-table", DataTable)
        assert table.row_count == 4
        assert {table.get_row_at(i)[1] for i in range(4)} == {"q4_0"}
        title = str(screen.query_one("#plan-title", Static).render())
        assert "ESTIMATES (no llama-quantize)" in title and f"{bpw:.2f} bpw" in title
        assert len(screen.query_one("#plan-bits", Sparkline).data) == 2  # two blocks
        await pilot.press("right_square_bracket")
        for _ in range(200):
            await pilot.pause(0.05)
            if screen.plan is not None and screen.plan.bpw > bpw + 0.1:
                break
        assert screen.bpw == pytest.approx(bpw + 0.5)
        assert screen.plan.bpw <= bpw + 0.5 and screen.plan.bpw > bpw + 0.1
        await pilot.press("w")
        await pilot.pause(0.1)
        written = dict(line.split("=") for line in recipe.read_text().split())
        assert written == {t.name: ggml_name(t.chosen.type) for t in screen.plan.tensors}
        assert set(written.values()) - {"q4_0"}  # the larger budget bought something
        recipe.write_text("mine\n")
        await pilot.press("w")
        await pilot.pause(0.1)
        assert recipe.read_text() == "mine\n"  # not replaced unasked
        await pilot.press("W")
        await pilot.pause(0.1)
        assert recipe.read_text() != "mine\n"
