"""A convergence step between two ~1 GB snapshots against one statistics pass, in the same process.

    python benchmarks/bench_convergence.py [--a /tmp/imatui-bench/deepseek.imatrix.gguf]
                                           [--b /tmp/imatui-bench/deepseek-b.imatrix.gguf] [--repeat 3]

A step is what the live view does when a new snapshot B arrives after A: B's per-channel means
(imatui.stats.convergence.channel_means; A's were kept from the step before) and the cosines between
the two (compare). The baseline is one statistics pass over A (compute_stats), timed in the same
process, alternately with the step, so that a busy moment of a shared machine hits both alike. Both
run in worker processes as the CLI's stats does (`fork`), and, on a second line, on the threads the
app uses. The files are the ones of benchmarks/bench_diff.py (B written by it when missing).

Target (issue 15): a step <= 1.2x one statistics pass.
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_diff import DEFAULT_A, DEFAULT_B, make_b  # noqa: E402


def cpu() -> float:
    """CPU seconds of this process and of the worker processes it waited for."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, default=DEFAULT_A)
    p.add_argument("--b", type=Path, default=DEFAULT_B)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if not args.b.exists():
        make_b(args.a, args.b)

    from imatui.formats import load
    from imatui.stats.convergence import Checkpoint, channel_means, compare
    from imatui.stats.tensor import compute_stats

    can_fork = "fork" in inspect.signature(channel_means).parameters  # (the code before issue 15: no)
    a, b = load(args.a), load(args.b)
    for path in (args.a, args.b):  # a warm page cache
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    load_before = os.getloadavg()[0]
    rows = []
    for fork in (True, False):
        kw = {"fork": fork} if can_fork else {}
        prev = Checkpoint(1, None, channel_means(a, **kw))
        stats_s, step_s, cpu_ratios = [], [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), cpu()
            compute_stats(a, fork=fork)
            stats_s.append(time.perf_counter() - t)
            stats_c = cpu() - c
            t, c = time.perf_counter(), cpu()
            step = compare(prev, Checkpoint(2, None, channel_means(b, **kw)))
            step_s.append(time.perf_counter() - t)
            cpu_ratios.append((cpu() - c) / stats_c)
        ratios = [s / b_ for s, b_ in zip(step_s, stats_s)]
        rows.append((fork, statistics.median(stats_s), statistics.median(step_s), ratios, step, cpu_ratios))
    load_after = os.getloadavg()[0]
    print(f"A {args.a}, B {args.b}; {args.repeat} runs each, median; load average {load_before:.1f} before, "
          f"{load_after:.1f} after")
    print(f"{'run on':34s} {'stats pass s':>12s} {'step s':>8s} {'step / stats':>13s} {'CPU ratio':>10s}  run by run")
    for fork, st, sp, ratios, _, cpu_ratios in rows:
        where = "worker processes (as the CLI)" if fork and can_fork else "threads (as the app)"
        if fork and not can_fork:
            where = "stats forked, means in one thread"
        print(f"{where:34s} {st:12.2f} {sp:8.2f} {statistics.median(ratios):13.2f} "
              f"{statistics.median(cpu_ratios):10.2f}  " + " ".join(f"{r:.2f}" for r in ratios))
    step = rows[0][4]
    print(f"step: {len(step.cossim)} tensors, min cosine {step.min:.6f} ({step.min_tensor}), "
          f"median {step.median:.6f}")
    ratio = statistics.median(rows[0][3])
    ok = ratio <= 1.2
    print(f"target: step <= 1.2x one statistics pass: {'met' if ok else 'NOT met'} ({ratio:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
