"""Live following: latency from the end of a write to the updated data, and idle CPU.

    python benchmarks/bench_live.py [--rounds 12] [--idle 10] [--app] [--big /tmp/imatui-bench/deepseek.imatrix.gguf]

- follower latency: a writer rewrites a SmolLM2 checkpoint in place (truncate, write, close) or by
  rename; the clock runs from the writer's close/rename to the follower yielding the complete file
  ("follower"), and to its statistics being computed as the app's open file does ("stats ready").
  Baseline, same run: one load + statistics pass of that file. Target: <= 200 ms.
- app latency (--app): the same, until the real app's tensor table shows the new chunk count.
- idle CPU: process CPU time while the follower waits on an unchanged file, against a bare
  asyncio.sleep over the same wall time.
- big file (--big): the 1 GB DeepSeek-shaped file from benchmarks/make_deepseek.py, copied to a
  temporary folder and rewritten in place; latency vs one load + statistics pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from imatui.formats import load
from imatui.live import Loaded, follow
from imatui.stats.convergence import ConvergenceSeries
from imatui.stats.tensor import compute_stats

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = [ROOT / "tests" / "fixtures" / "checkpoints" / f"smollm2-prose.imatrix.gguf.at_{n}"
               for n in (10, 20, 30, 40)]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def baseline_pass(path: Path) -> float:
    t = time.perf_counter()
    compute_stats(load(path))
    return time.perf_counter() - t


async def follower_latency(path: Path, blobs: list[bytes], writer, rounds: int) -> tuple[list[float], list[float]]:
    """(until the follower yields, until statistics are ready) per round, seconds."""
    seen, ready = [], []
    ends: dict[int, float] = {}
    got = threading.Event()
    started = threading.Event()

    def run_writer() -> None:
        started.wait(10)
        for i in range(rounds):
            data = blobs[i % len(blobs)]
            got.clear()
            writer(path, data)
            ends[i] = time.monotonic()
            if not got.wait(30):
                raise RuntimeError(f"round {i}: the follower did not yield the new file")
            time.sleep(0.05)

    thread = threading.Thread(target=run_writer, daemon=True)
    thread.start()
    i = 0
    series = ConvergenceSeries()
    first = True
    async for event in follow(path):
        if not isinstance(event, Loaded):
            continue
        if first:  # the file as it was before the writer started
            first = False
            started.set()
            continue
        t_seen = time.monotonic()
        await asyncio.to_thread(compute_stats, event.imatrix)
        await asyncio.to_thread(series.add, event.imatrix, event.mtime)
        t_ready = time.monotonic()
        seen.append(t_seen - ends[i])
        ready.append(t_ready - ends[i])
        i += 1
        got.set()
        if i == rounds:
            break
    thread.join(5)
    return seen, ready


async def idle_cpu(path: Path, seconds: float) -> tuple[float, float]:
    """(CPU seconds of a bare sleep, CPU seconds while following an unchanged file) over `seconds`."""
    c0 = cpu_seconds()
    await asyncio.sleep(seconds)
    bare = cpu_seconds() - c0

    async def consume() -> None:
        async for _ in follow(path):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)  # first load done
    c0 = cpu_seconds()
    await asyncio.sleep(seconds)
    following = cpu_seconds() - c0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return bare, following


async def app_latency(path: Path, blobs: list[bytes], rounds: int) -> tuple[list[float], list[float]]:
    """End of write -> the open file posts DataLoaded, and -> the app's handler has updated the table."""
    from imatui.tui.app import ImatuiApp, make_app

    handled: list[float] = []
    original = ImatuiApp.on_data_loaded

    def timed(self, message) -> None:
        original(self, message)
        handled.append(time.monotonic())

    ImatuiApp.on_data_loaded = timed  # type: ignore[method-assign]
    app = make_app([str(path)])
    posted_out: list[float] = []
    out: list[float] = []
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await app.wait_for_data()
            await pilot.pause(0.5)
            for i in range(rounds):
                data = blobs[i % len(blobs)]
                count = len(handled)
                await asyncio.to_thread(write_in_place, path, data)
                end = time.monotonic()
                while len(handled) == count:
                    await asyncio.sleep(0.002)
                    if time.monotonic() - end > 30:
                        raise RuntimeError("the app did not update")
                posted_out.append(app.open_file.loaded_at - end)
                out.append(handled[-1] - end)
                await pilot.pause(0.3)
    finally:
        ImatuiApp.on_data_loaded = original  # type: ignore[method-assign]
    return posted_out, out


async def app_idle_cpu(path: Path, seconds: float, follow_file: bool) -> float:
    """CPU seconds of the headless app showing an unchanged file, with or without following."""
    from imatui.tui.app import make_app

    app = make_app([str(path)])
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        if not follow_file:  # the file stays on screen; its follower (group "watch") stops
            app.workers.cancel_group(app, "watch")
        await pilot.pause(1.0)
        c0 = cpu_seconds()
        await asyncio.sleep(seconds)
        return cpu_seconds() - c0


def fmt(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms  (n={len(ms)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--app", action="store_true", help="also measure the real app's table update")
    ap.add_argument("--big", type=Path, help="the 1 GB file from benchmarks/make_deepseek.py")
    args = ap.parse_args(argv)

    # SmolLM2 checkpoints whose chunk counts differ from one round to the next
    blobs = [p.read_bytes() for p in CHECKPOINTS]
    with tempfile.TemporaryDirectory(prefix="imatui-bench-live-") as tmp:
        path = Path(tmp) / "smollm2.imatrix.gguf"
        path.write_bytes(blobs[-1])
        base = [baseline_pass(path) for _ in range(5)]
        print(f"SmolLM2 ({len(blobs[0]) / 1e6:.2f} MB), baseline one load + statistics pass: {fmt(base)}")
        for name, writer in (("in place", write_in_place), ("rename", write_atomic)):
            seen, ready = asyncio.run(follower_latency(path, blobs, writer, args.rounds))
            base_ms = statistics.median(base) * 1000
            print(f"  {name:8s} write -> follower yields:  {fmt(seen)}")
            print(f"  {name:8s} write -> stats ready:      {fmt(ready)}  "
                  f"= {statistics.median(ready) * 1000 / base_ms:.2f}x baseline; target 200 ms")
        if args.app:
            posted, lat = asyncio.run(app_latency(path, blobs, args.rounds))
            print(f"  in place write -> app posts data:           {fmt(posted)}")
            print(f"  in place write -> app table updated:      {fmt(lat)}")
            without = asyncio.run(app_idle_cpu(path, args.idle, False))
            with_watch = asyncio.run(app_idle_cpu(path, args.idle, True))
            print(f"app idle over {args.idle:.0f} s: {without * 1000:.0f} ms CPU without following, "
                  f"{with_watch * 1000:.0f} ms with it")
        bare, following = asyncio.run(idle_cpu(path, args.idle))
        print(f"idle over {args.idle:.0f} s: bare sleep {bare * 1000:.0f} ms CPU, following {following * 1000:.0f} ms "
              f"CPU ({100 * following / args.idle:.2f}% of one core)")

    if args.big:
        if not args.big.exists():
            print(f"{args.big}: not found (python benchmarks/make_deepseek.py writes it)", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="imatui-bench-live-big-", dir="/tmp") as tmp:
            path = Path(tmp) / "deepseek.imatrix.gguf"
            shutil.copyfile(args.big, path)
            data = args.big.read_bytes()
            base = baseline_pass(path)
            print(f"DeepSeek-shaped ({len(data) / 1e9:.2f} GB), one load + statistics pass: {base:.2f} s")
            seen, ready = asyncio.run(follower_latency(path, [data], write_in_place, 2))
            print(f"  in place write -> follower yields (lazy): {fmt(seen)}")
            print(f"  in place write -> stats ready:           {fmt(ready)}  "
                  f"= {statistics.median(ready) / base:.2f}x one pass")
            del data
    return 0


if __name__ == "__main__":
    sys.exit(main())
