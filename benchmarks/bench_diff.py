"""`imatui diff A B` of two ~1 GB imatrix files against one `imatui stats A` pass, in the same run.

    python benchmarks/bench_diff.py [--a /tmp/imatui-bench/deepseek.imatrix.gguf]
        [--b /tmp/imatui-bench/deepseek-b.imatrix.gguf]
        [--b-calibration /tmp/imatui-bench/deepseek-b-calibration.imatrix.gguf]
        [--b-checkpoint /tmp/imatui-bench/deepseek-b-checkpoint.imatrix.gguf]
        [--pair all|shifted|calibration|checkpoint] [--repeat 3] [--copies]

A is the DeepSeek-V3-shaped file of benchmarks/make_deepseek.py (written first when missing). Three B
files are derived from it and written once with imatui's writer, one tensor at a time (reused when
they exist); in each, a few more experts are never hit:
- shifted: each tensor's channels scaled by a smooth random walk in log space, which drifts to
  factors of e^±8 over 7168 channels: 49 % of the channels have |d| > 0.5 (d = (q - p) / (p + q) of
  the normalized mean importances), where the diff takes two logarithms each;
- calibration: each value's log-ratio drawn from a Laplace law whose scale is drawn per tensor, so
  that the channels' |d| spread as between SmolLM2's prose and code files (the fixtures: 55 %, 17 %
  and 7 % above 0.1, 0.3 and 0.5);
- checkpoint: the same with a fifth of the scale, spread as between SmolLM2's checkpoints after 10 and 20
  chunks (here 7 % of the channels above 0.1, 0.4 % above 0.3; there 5 % and 0.06 %).
The benchmark prints each pair's shares.
The diff's time depends on that spread (imatui.stats.compare._row_far), the statistics' does not.

Every command runs as its own process, as a user runs it (interpreter start and imports included),
interleaved run by run so that a busy moment of a shared machine hits them alike; wall time by the
clock, and the ratio diff / stats is taken run by run. CPU time (user + system) counts every process
of a command (imatui forks a worker per CPU; wait4 reports the children a process waited for): on a
machine shared with other work, where a command gets a varying part of the cores, the CPU ratio is
the one that stays put, and on a quiet machine both commands keep the cores busy, so that the wall
ratio comes near it. Peak RSS is the sum over a command's processes, sampled in a run of its own.

`--copies` runs on copies of A and B with llama-imatrix's repeated tensors (its files hold the
up and gate experts, shared experts and dense FFN, and attn_kv_a_mqa and attn_q_a, byte for byte
alike: their matmuls share one input), which the diff compares once.

Targets (issue 15): diff <= 2x one stats pass, peak RSS of all processes <= 400 MB; judged on
`--format json` (everything, 44,544 expert rows included); `--format table` is shown beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_stats import tree_peak  # noqa: E402

DEFAULT_A = Path("/tmp/imatui-bench/deepseek.imatrix.gguf")
DEFAULT_B = Path("/tmp/imatui-bench/deepseek-b.imatrix.gguf")
DEFAULT_B_CALIBRATION = Path("/tmp/imatui-bench/deepseek-b-calibration.imatrix.gguf")
DEFAULT_B_CHECKPOINT = Path("/tmp/imatui-bench/deepseek-b-checkpoint.imatrix.gguf")
# the B files, derived from A (in each, a few more experts are never hit): the scale of the Laplace law
# of each value's log-ratio (drawn per tensor as scale · e^(0.6 N(0,1))), or None for the random walk
PAIRS = {
    # each tensor's channels scaled by a smooth random walk in log space (steps of 5 %): over 7168
    # channels it drifts to factors of e^±8, far more than two calibrations of one model differ
    "shifted": None,
    # the |d| of its channels spread as those of SmolLM2's prose and code imatrix files (fixtures)
    "calibration": 0.3,
    # spread as SmolLM2's prose checkpoints after 10 and 20 chunks
    "checkpoint": 0.06,
}



def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of it and the children it waited for) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:5])}... failed: {proc.stderr.read().decode().strip()}")
    return wall, usage.ru_utime + usage.ru_stime


def make_b(a_path: Path, b_path: Path, pair: str) -> None:
    """B from A (PAIRS[pair]), written under a temporary name and renamed (another process may be
    writing it too)."""
    from imatui.formats import load
    from imatui.formats.write import save
    from imatui.imatrix import Entry, Imatrix

    a = load(a_path)

    def derived(entry: Entry):
        rng = np.random.default_rng(zlib.crc32(entry.name.encode()) ^ 0xB)
        counts = np.array(entry.counts, dtype=np.float64)
        if entry.n_mat > 1:  # a few more experts never hit in B
            live = np.flatnonzero(counts > 0)
            counts[rng.choice(live, 2, replace=False)] = 0

        def sums2() -> np.ndarray:
            if PAIRS[pair] is None:
                r = np.random.default_rng(zlib.crc32(entry.name.encode()) ^ 0xB)
                profile = np.exp(np.cumsum(r.normal(0, 0.05, entry.n_in))).astype(np.float32)
                out = np.array(entry.sums2, dtype=np.float32) * profile
            else:  # each value's log-ratio Laplace-distributed, its scale drawn per tensor
                r = np.random.default_rng(zlib.crc32(entry.name.encode()) ^ 0xC)
                scale = PAIRS[pair] * np.exp(0.6 * r.standard_normal())
                ratio = np.exp(r.laplace(0.0, scale, entry.shape)).astype(np.float32)
                out = np.array(entry.sums2, dtype=np.float32).reshape(entry.shape) * ratio
            out[counts == 0] = 0
            return out

        return Entry(name=entry.name, shape=entry.shape, counts=counts, _sums2=sums2)

    b = Imatrix(entries={n: derived(e) for n, e in a.entries.items()}, datasets=["synthetic-deepseek-b"],
                chunk_count=a.chunk_count * 2, chunk_size=a.chunk_size, format="gguf")
    t = time.perf_counter()
    tmp = b_path.with_name(f".{b_path.name}.{os.getpid()}.tmp")
    save(b, tmp, format="gguf")
    if b_path.exists():
        tmp.unlink()
    else:
        os.replace(tmp, b_path)
    print(f"wrote {b_path} ({b_path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)


# the tensors llama-imatrix writes with the same bytes (their matmuls share one input): copy <- original
LLAMA_COPIES = {"ffn_up_exps": "ffn_gate_exps", "ffn_up_shexp": "ffn_gate_shexp", "ffn_up": "ffn_gate",
                "attn_kv_a_mqa": "attn_q_a"}


def make_copies(src: Path, dst: Path) -> None:
    """src with llama-imatrix's repeats: each tensor of LLAMA_COPIES holds its original's bytes."""
    from imatui.formats import load
    from imatui.formats.write import save
    from imatui.imatrix import Entry, Imatrix

    im = load(src)
    entries = {}
    for name, e in im.entries.items():
        parts = name.split(".")
        if len(parts) == 4 and parts[2] in LLAMA_COPIES:
            o = im.entries[f"{parts[0]}.{parts[1]}.{LLAMA_COPIES[parts[2]]}.weight"]
            e = Entry(name=name, shape=o.shape, counts=o.counts, _sums2=lambda o=o: o.sums2)
        entries[name] = e
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    save(Imatrix(entries=entries, datasets=im.datasets, chunk_count=im.chunk_count, chunk_size=im.chunk_size,
                 format="gguf"), tmp, format="gguf")
    os.replace(tmp, dst)


def far_share(a_path: Path, b_path: Path, every: int = 7) -> dict[float, float]:
    """Share of the channels (experts live in both) with |d| above 0.1, 0.3 and 0.5, d = (q - p) / (p + q)
    of the two normalized mean importances, over every 7th tensor: how different the pair is."""
    from imatui.formats import load

    a, b = load(a_path), load(b_path)
    far = {t: 0 for t in (0.1, 0.3, 0.5)}
    n = 0
    for name in sorted(a.entries)[::every]:
        ea, eb = a.entries[name], b.entries[name]
        live = (np.asarray(ea.counts) > 0) & (np.asarray(eb.counts) > 0)
        if not live.any():
            continue
        pa, pb = ea.mean_importance(live), eb.mean_importance(live)
        pa, pb = pa / pa.sum(), pb / pb.sum()
        s = pa + pb
        d = np.abs(pa - pb)[s > 0] / s[s > 0]
        n += d.size
        for t in far:
            far[t] += int(np.count_nonzero(d > t))
    return {t: c / n for t, c in far.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, default=DEFAULT_A)
    p.add_argument("--b", type=Path, default=DEFAULT_B, help="B of the shifted pair")
    p.add_argument("--b-calibration", type=Path, default=DEFAULT_B_CALIBRATION, help="B of the calibration pair")
    p.add_argument("--b-checkpoint", type=Path, default=DEFAULT_B_CHECKPOINT, help="B of the checkpoint pair")
    p.add_argument("--pair", choices=("all", *PAIRS), default="all")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--copies", action="store_true",
                   help="A and B with llama-imatrix's repeated tensors (up = gate, attn_kv_a_mqa = attn_q_a), "
                        "written beside them once")
    args = p.parse_args(argv)
    if not args.a.exists():
        subprocess.run([sys.executable, str(HERE / "make_deepseek.py"), "-o", str(args.a)], check=True)
    pairs = {"shifted": args.b, "calibration": args.b_calibration, "checkpoint": args.b_checkpoint}
    pairs = {k: v for k, v in pairs.items() if args.pair in ("all", k)}
    for pair, path in pairs.items():
        if not path.exists():
            make_b(args.a, path, pair)
    if args.copies:
        def with_copies(path: Path) -> Path:
            copies = path.with_name(path.name.replace(".imatrix.gguf", "") + "-copies.imatrix.gguf")
            if not copies.exists():
                make_copies(path, copies)
            return copies

        args.a = with_copies(args.a)
        pairs = {k: with_copies(v) for k, v in pairs.items()}
    for path in (args.a, *pairs.values()):  # a warm page cache for every run alike
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    py = sys.executable
    a = str(args.a)
    commands = {
        "read floor (numpy, A and a B)": [py, str(HERE / "read_floor.py"), a, str(next(iter(pairs.values())))],
        "imatui stats A": [py, "-m", "imatui", "stats", a, "--format", "table"],
    }
    for pair, path in pairs.items():
        commands[f"imatui diff A B ({pair})"] = [py, "-m", "imatui", "diff", a, str(path), "--format", "json"]
        commands[f"  the same, --format table ({pair})"] = [py, "-m", "imatui", "diff", a, str(path),
                                                          "--format", "table"]
    load_before = os.getloadavg()[0]
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus_s: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            wall, cpu = run(cmd)
            walls[name].append(wall)
            cpus_s[name].append(cpu)
    peaks = {name: tree_peak(cmd) for name, cmd in commands.items()}
    load_after = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"A {a} ({args.a.stat().st_size / 1e9:.2f} GB); {args.repeat} runs each, median; "
          f"{cpus} CPUs, load average {load_before:.1f} before, {load_after:.1f} after")
    for pair, path in pairs.items():
        share = far_share(args.a, path)
        print(f"B ({pair}) {path}: channels with |d| > 0.1 / 0.3 / 0.5: "
              + " / ".join(f"{share[t]:.0%}" for t in (0.1, 0.3, 0.5))
              + " (SmolLM2's prose vs code files: 55% / 17% / 7%)")
    stats_med = statistics.median(walls["imatui stats A"])
    stats_cpu = statistics.median(cpus_s["imatui stats A"])
    print(f"{'command':40s} {'wall s':>8s} {'x stats':>8s} {'CPU s':>8s} {'x stats':>8s} {'peak RSS MB (all)':>18s}")
    for name, w in walls.items():
        med, cpu = statistics.median(w), statistics.median(cpus_s[name])
        print(f"{name:40s} {med:8.2f} {med / stats_med:8.2f} {cpu:8.2f} {cpu / stats_cpu:8.2f} {peaks[name]:18.0f}")
    ok = True
    for pair in pairs:
        key = f"imatui diff A B ({pair})"
        ratios = [d / s for d, s in zip(walls[key], walls["imatui stats A"])]
        cpu_ratios = [d / s for d, s in zip(cpus_s[key], cpus_s["imatui stats A"])]
        ratio = statistics.median(ratios)
        ok_t, ok_m = ratio <= 2.0, peaks[key] <= 400
        ok = ok and ok_t and ok_m
        print(f"{pair}: diff / stats, run by run: wall " + " ".join(f"{r:.2f}" for r in ratios)
              + "; CPU " + " ".join(f"{r:.2f}" for r in cpu_ratios))
        print(f"{pair}: targets: diff <= 2x one stats pass: {'met' if ok_t else 'NOT met'} ({ratio:.2f}x wall, "
              f"{statistics.median(cpu_ratios):.2f}x CPU, medians of the runs' ratios); peak RSS <= 400 MB: "
              f"{'met' if ok_m else 'NOT met'} ({peaks[key]:.0f} MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
