"""How long the expert map of a large MoE imatrix takes to draw, and what its numbers cost.

    python benchmarks/bench_experts.py [FILE] [--repeat N]

Default FILE: the 1 GB synthetic DeepSeek file written by benchmarks/make_deepseek.py
(/tmp/imatui-bench/deepseek.imatrix.gguf: 58 MoE layers x 256 experts, 721 tensors).

Measured, each the median of N runs in this process:
  load            formats.load (header, eager counts, lazy sums2)
  coverage        stats.experts.coverage: dead / rare / chunks needed, from the counts
  map drawn       the expert screen pushed headless (App.run_test) at 80x24 and 200x60, until the
                  map has painted (the screen's own cost on top of a loaded file)
  expert detail   until the cursor's expert has its statistics and chart (reads one tensor)
  expert table    stats.experts.expert_table on one 256 x 7168 tensor
  diff experts    stats.experts.diff_experts of the file with itself (reads every expert tensor twice)

Target (the app's table target): the map of the 1 GB file drawn within 2 s, load included.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.app import App  # noqa: E402

from imatui.formats import load  # noqa: E402
from imatui.stats.experts import coverage, diff_experts, expert_table, expert_tensors  # noqa: E402
from imatui.tui.screens.experts import ExpertMap, ExpertsScreen  # noqa: E402

DEFAULT = Path("/tmp/imatui-bench/deepseek.imatrix.gguf")


class _Host(App):
    def __init__(self, imatrix) -> None:
        super().__init__()
        self.imatrix = imatrix
        self.pushed_at = 0.0

    def on_mount(self) -> None:
        self.pushed_at = time.perf_counter()
        self.pushed_cpu = time.process_time()
        self.push_screen(ExpertsScreen(self.imatrix))


async def _screen_times(imatrix, size: tuple[int, int]) -> tuple[float, float, float]:
    """(wall to the map drawn, CPU of this process to the map drawn, wall to the expert detail)."""
    app = _Host(imatrix)
    async with app.run_test(size=size) as pilot:
        while not (isinstance(app.screen, ExpertsScreen) and app.screen.query_one(ExpertMap).coverage):
            await asyncio.sleep(0.001)
        await pilot.pause()  # one refresh: the map is on screen
        drawn = time.perf_counter() - app.pushed_at
        cpu = time.process_time() - app.pushed_cpu
        screen = app.screen
        while screen.detail is None:
            await asyncio.sleep(0.005)
        await pilot.pause()
        detail = time.perf_counter() - app.pushed_at
    return drawn, cpu, detail


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not Path(args.file).exists():
        print(f"{args.file}: missing (benchmarks/make_deepseek.py writes it)", file=sys.stderr)
        return 2
    print(f"file: {args.file} ({Path(args.file).stat().st_size / 1e9:.2f} GB)")
    cpu0 = time.process_time()
    load_s = _median(lambda: load(args.file), args.repeat)
    print(f"(load CPU {(time.process_time() - cpu0) / args.repeat * 1000:.0f} ms a run; a busy machine "
          "stretches wall times: compare CPU)")
    im = load(args.file)
    layers = expert_tensors(im)
    print(f"{len(layers)} MoE layers, {sum(len(v) for v in layers.values())} expert tensors")
    print(f"load            {load_s * 1000:8.1f} ms")
    print(f"coverage        {_median(lambda: coverage(im), args.repeat) * 1000:8.1f} ms")
    worst = 0.0
    for size in ((80, 24), (200, 60)):
        runs = [asyncio.run(_screen_times(im, size)) for _ in range(args.repeat)]
        drawn = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        detail = statistics.median(r[2] for r in runs)
        worst = max(worst, load_s + drawn)
        print(f"map drawn {size[0]}x{size[1]:<3} {drawn * 1000:8.1f} ms (CPU {cpu * 1000:.0f} ms; load + map "
              f"{(load_s + drawn) * 1000:.0f} ms)   expert detail {detail * 1000:8.1f} ms")
    first = next(iter(layers.values()))[0]
    print(f"expert table    {_median(lambda: expert_table(im[first]), args.repeat) * 1000:8.1f} ms ({first})")
    other = load(args.file)
    print(f"diff experts    {_median(lambda: diff_experts(im, other), 1) * 1000:8.1f} ms")
    print(f"target: load + map drawn <= 2000 ms: {'met' if worst <= 2.0 else 'MISSED'} ({worst * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
