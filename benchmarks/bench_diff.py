"""`imatui diff A B` of two ~1 GB imatrix files against one `imatui stats A` pass, in the same run.

    python benchmarks/bench_diff.py [--a /tmp/imatui-bench/deepseek.imatrix.gguf]
                                    [--b /tmp/imatui-bench/deepseek-b.imatrix.gguf] [--repeat 3] [--copies]

A is the DeepSeek-V3-shaped file of benchmarks/make_deepseek.py (written first when missing); B is
derived from it (each tensor's channels scaled by a seeded smooth profile, a few more experts never
hit), written once with imatui's writer, one tensor at a time (reused when it exists).

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



def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of it and the children it waited for) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:5])}... failed: {proc.stderr.read().decode().strip()}")
    return wall, usage.ru_utime + usage.ru_stime


def make_b(a_path: Path, b_path: Path) -> None:
    """B from A, written under a temporary name and renamed (another process may be writing it too)."""
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
            r = np.random.default_rng(zlib.crc32(entry.name.encode()) ^ 0xB)
            profile = np.exp(np.cumsum(r.normal(0, 0.05, entry.n_in))).astype(np.float32)
            out = np.array(entry.sums2, dtype=np.float32) * profile
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, default=DEFAULT_A)
    p.add_argument("--b", type=Path, default=DEFAULT_B)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--copies", action="store_true",
                   help="A and B with llama-imatrix's repeated tensors (up = gate, attn_kv_a_mqa = attn_q_a), "
                        "written beside them once")
    args = p.parse_args(argv)
    if not args.a.exists():
        subprocess.run([sys.executable, str(HERE / "make_deepseek.py"), "-o", str(args.a)], check=True)
    if not args.b.exists():
        make_b(args.a, args.b)
    if args.copies:
        for side in ("a", "b"):
            path = getattr(args, side)
            copies = path.with_name(path.name.replace(".imatrix.gguf", "") + "-copies.imatrix.gguf")
            if not copies.exists():
                make_copies(path, copies)
            setattr(args, side, copies)
    for path in (args.a, args.b):  # a warm page cache for every run alike
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    py = sys.executable
    a, b = str(args.a), str(args.b)
    commands = {
        "read floor (numpy, A and B)": [py, str(HERE / "read_floor.py"), a, b],
        "imatui stats A": [py, "-m", "imatui", "stats", a, "--format", "table"],
        "imatui diff A B": [py, "-m", "imatui", "diff", a, b, "--format", "json"],
        "imatui diff A B, --format table": [py, "-m", "imatui", "diff", a, b, "--format", "table"],
    }
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
    print(f"A {a}, B {b} ({args.a.stat().st_size / 1e9:.2f} GB each); {args.repeat} runs each, median; "
          f"{cpus} CPUs, load average {load_before:.1f} before, {load_after:.1f} after")
    stats_med = statistics.median(walls["imatui stats A"])
    stats_cpu = statistics.median(cpus_s["imatui stats A"])
    print(f"{'command':32s} {'wall s':>8s} {'x stats':>8s} {'CPU s':>8s} {'x stats':>8s} {'peak RSS MB (all)':>18s}")
    for name, w in walls.items():
        med, cpu = statistics.median(w), statistics.median(cpus_s[name])
        print(f"{name:32s} {med:8.2f} {med / stats_med:8.2f} {cpu:8.2f} {cpu / stats_cpu:8.2f} {peaks[name]:18.0f}")
    ratios = [d / s for d, s in zip(walls["imatui diff A B"], walls["imatui stats A"])]
    cpu_ratios = [d / s for d, s in zip(cpus_s["imatui diff A B"], cpus_s["imatui stats A"])]
    print("diff / stats, run by run: wall " + " ".join(f"{r:.2f}" for r in ratios)
          + "; CPU " + " ".join(f"{r:.2f}" for r in cpu_ratios))
    ratio = statistics.median(ratios)
    ok_t, ok_m = ratio <= 2.0, peaks["imatui diff A B"] <= 400
    print(f"targets: diff <= 2x one stats pass: {'met' if ok_t else 'NOT met'} ({ratio:.2f}x wall, "
          f"{statistics.median(cpu_ratios):.2f}x CPU, medians of the runs' ratios); peak RSS <= 400 MB: {'met' if ok_m else 'NOT met'} ({peaks['imatui diff A B']:.0f} MB)")
    return 0 if ok_t and ok_m else 1


if __name__ == "__main__":
    raise SystemExit(main())
