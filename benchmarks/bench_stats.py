"""Time `imatui stats` on a DeepSeek-V3-shaped imatrix against a plain numpy pass over the same file.

Every command runs as its own process (interpreter start and imports included, as a user sees it);
wall time by the clock, peak RSS from that child's own rusage (os.wait4). The page cache is warmed
first, and each measurement is repeated; the median is reported.

    python benchmarks/make_deepseek.py            # once: writes /tmp/imatui-bench/deepseek.imatrix.gguf
    python benchmarks/bench_stats.py [--file F] [--repeat 3]

Targets (issue 2): imatui wall <= 3x the baseline, peak RSS <= 400 MB.

`--against DIR` also runs `imatui stats` from another checkout (DIR on PYTHONPATH: the code before a
change), interleaved with this one's, and compares their times run by run and their outputs byte
for byte (issue 15: no slower than before, within 5 %, and the same bytes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = Path("/tmp/imatui-bench/deepseek.imatrix.gguf")


# what the issue calls "a naive numpy version": the whole file in memory at once
NAIVE = r"""
import sys, numpy as np
from gguf import GGUFReader
path = sys.argv[1]
r = GGUFReader(path)
start = min(int(t.data_offset) for t in r.tensors)
del r
a = np.fromfile(path, dtype="<f4", offset=start)
print(float(a.sum(dtype=np.float64)))
"""


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KB


def _tree_rss_kb(pid: int) -> int:
    """VmRSS of pid and all its descendants, in KB (0 once it is gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        kids: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return total
    return total + sum(_tree_rss_kb(k) for k in kids)


def tree_peak(cmd: list[str], every: float = 0.005, env: dict | None = None) -> float:
    """Peak of the summed RSS of a command and its worker processes, in MB, sampled every `every` s.

    wait4's ru_maxrss is the largest single process of the tree, not the sum; imatui stats forks a
    worker per CPU. Sampled in a run of its own: the sampling would disturb the timed runs.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(every)
    return peak / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, default=DEFAULT)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true", help="do not run the whole-file numpy version")
    p.add_argument("--against", type=Path, help="another checkout whose `imatui stats` to compare with")
    args = p.parse_args(argv)
    if not args.file.exists():
        raise SystemExit(f"{args.file} does not exist: run benchmarks/make_deepseek.py first")

    size_gb = args.file.stat().st_size / 1e9
    with open(args.file, "rb") as f:  # warm the page cache: every run reads from memory
        while f.read(1 << 24):
            pass
    # imatui's bytecode, as an installed package has it (pip compiles at install; an editable install
    # writes it on first import, unless PYTHONDONTWRITEBYTECODE is set, as in some sandboxes)
    import compileall

    import imatui

    compileall.compile_dir(Path(imatui.__file__).parent, quiet=1)
    py = sys.executable
    commands = {
        "baseline (numpy memmap, one summing pass)": [py, str(HERE / "read_floor.py"), str(args.file)],
        "imatui stats --format table": [py, "-m", "imatui", "stats", str(args.file), "--format", "table"],
    }
    if not args.skip_naive:
        commands["naive numpy (whole file in RAM)"] = [py, "-c", NAIVE, str(args.file)]

    envs: dict[str, dict | None] = {k: None for k in commands}
    if args.against:
        here = str(Path(imatui.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=str(args.against.resolve()))
        compileall.compile_dir(args.against / "imatui", quiet=1)  # its bytecode too, as for this one
        commands["imatui stats, --against checkout"] = commands["imatui stats --format table"]
        envs["imatui stats, --against checkout"] = env
        envs["imatui stats --format table"] = dict(os.environ, PYTHONPATH=here)
        outs = [subprocess.run(commands["imatui stats --format table"], env=e, capture_output=True,
                               check=True).stdout for e in (envs["imatui stats --format table"], env)]
        print(f"--against {args.against}: output {'byte-identical' if outs[0] == outs[1] else 'DIFFERENT'} "
              f"({len(outs[0])} bytes)")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every command alike
        for name, cmd in commands.items():
            results[name].append(run(cmd, envs[name]))

    # memory: wait4's peak of the largest process, and the sampled sum over the command's processes
    for name, cmd in commands.items():
        tree = tree_peak(cmd, env=envs[name])
        results[name] = [(w, max(r, tree)) for w, r in results[name]]

    load = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"file: {args.file} ({size_gb:.2f} GB), {args.repeat} runs each, median; "
          f"{cpus} CPUs, load average {load:.1f}")
    med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in results.items()}
    base_name = "baseline (numpy memmap, one summing pass)"
    base_wall = med[base_name][0]
    print(f"{'command':45s} {'wall s':>8s} {'x base':>7s} {'peak RSS MB':>12s}")
    for name, (wall, rss) in med.items():
        print(f"{name:45s} {wall:8.2f} {wall / base_wall:7.2f} {rss:12.0f}")
    print("peak RSS: all of a command's processes together (imatui stats forks one worker per CPU)")
    runs = [w / b for (w, _), (b, _) in zip(results["imatui stats --format table"], results[base_name])]
    print("imatui / baseline, run by run: " + " ".join(f"{r:.2f}" for r in runs))
    if args.against:
        vs = [w / b for (w, _), (b, _) in zip(results["imatui stats --format table"],
                                              results["imatui stats, --against checkout"])]
        print(f"imatui / --against checkout: {statistics.median(vs):.3f} (median), run by run: "
              + " ".join(f"{r:.3f}" for r in vs))
    wall, rss = med["imatui stats --format table"]
    ok_t, ok_m = wall <= 3 * base_wall, rss <= 400
    print(f"targets: wall <= 3x baseline: {'met' if ok_t else 'NOT met'} ({wall / base_wall:.2f}x); "
          f"peak RSS <= 400 MB: {'met' if ok_m else 'NOT met'} ({rss:.0f} MB)")
    print("issue's figures on a 2-core machine: llama-imatrix --show-statistics 10 s / 1.9 GB, "
          f"naive numpy 1.5 s / 1 GB; imatui here {wall:.2f} s / {rss:.0f} MB")
    return 0 if ok_t and ok_m else 1


if __name__ == "__main__":
    raise SystemExit(main())
