"""Time to first frame and to a filled table in the explorer, against the statistics alone.

    python benchmarks/bench_tui.py [FILE ...] [--repeat N]

Default files: the SmolLM2 fixture and, when it exists, the 1 GB synthetic DeepSeek file written by
benchmarks/make_deepseek.py (/tmp/imatui-bench/deepseek.imatrix.gguf).

Each measurement runs in a fresh Python process (imports included, as a user pays them), with the
app headless at 120x40 (App.run_test):
  first frame   from App construction to the first screen refresh (targets: <= 0.5 s)
  filled        from App construction to the table holding every row (target: <= 2 s for 1 GB)
  spawn→frame   from starting the process to the first frame (Python and Textual imports included)
  key latency   while the statistics run: a key event (`m`) posted to the app until the sparklines
                changed metric
The baseline, measured in the same run on the same file: `load + compute_stats` in a fresh process,
no UI. The ratio filled / baseline is the cost of the UI on top of the numbers.

Targets: first frame <= 0.5 s for any file; table filled <= 2 s for the 1 GB file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [ROOT / "tests/fixtures/smollm2-prose.imatrix.gguf",
                 Path("/tmp/imatui-bench/deepseek.imatrix.gguf")]


def _child_baseline(path: str) -> None:
    t0 = time.perf_counter()
    from imatui.formats import load
    from imatui.stats import compute_stats

    t1 = time.perf_counter()
    report = compute_stats(load(path))
    t2 = time.perf_counter()
    print(json.dumps({"stats_s": t2 - t1, "import_s": t1 - t0, "tensors": len(report.tensors)}))


def _child_app(path: str) -> None:
    import asyncio

    spawn_wall = float(sys.argv[-1])
    press_keys = sys.argv[-2] == "keys"
    from textual import events

    from imatui.tui.app import make_app
    from imatui.tui.widgets.layer_sparklines import LayerSparklines

    async def run() -> dict:
        app = make_app([path])
        latencies = []
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.perf_counter() + 120
            while app.table_filled_at is None and time.perf_counter() < deadline:
                if app.load_errors:
                    raise SystemExit(f"load failed: {app.load_errors[0]}")
                if not press_keys:
                    await asyncio.sleep(0.005)
                    continue
                # a key as the terminal driver delivers it; handled when the metric has changed
                # (Pilot.press would also wait for the process to go idle, which it never does
                # while the statistics thread runs)
                sparklines = app.query_one(LayerSparklines)
                before = sparklines.metric_index
                t = time.perf_counter()
                app.post_message(events.Key("m", "m"))
                while sparklines.metric_index == before and time.perf_counter() - t < 10:
                    await asyncio.sleep(0.001)
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)
            rows = app.tensor_table.row_count
            first_wall = time.time() - (time.perf_counter() - app.first_frame_at)
            return {
                "first_frame_s": app.first_frame_at - app.created_at,
                "filled_s": app.table_filled_at - app.created_at,
                "spawn_to_frame_s": first_wall - spawn_wall,
                "rows": rows,
                "key_latency_max_s": max(latencies) if latencies else None,
                "key_latency_median_s": statistics.median(latencies) if latencies else None,
                "keys": len(latencies),
            }

    print(json.dumps(asyncio.run(run())))


def _spawn(mode: str, path: Path, keys: bool = False) -> dict:
    cmd = [sys.executable, __file__, f"--child-{mode}", str(path), "keys" if keys else "nokeys",
           repr(time.time())]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{mode} on {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child-"):
        {"--child-baseline": _child_baseline, "--child-app": _child_app}[sys.argv[1]](sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="runs per file (the median is reported)")
    args = ap.parse_args()
    files = args.files or [f for f in DEFAULT_FILES if f.exists()]
    for path in files:
        if not path.exists():
            print(f"skip {path}: not there (benchmarks/make_deepseek.py writes the 1 GB file)")
            continue
        _spawn("baseline", path)  # warm the page cache so both sides read from memory
        base, app, keyed = [], [], []
        for _ in range(args.repeat):
            base.append(_spawn("baseline", path))
            app.append(_spawn("app", path))
            keyed.append(_spawn("app", path, keys=True))
        med = lambda rows, key: statistics.median(r[key] for r in rows if r[key] is not None)  # noqa: E731
        stats_s = med(base, "stats_s")
        first, filled, spawn = med(app, "first_frame_s"), med(app, "filled_s"), med(app, "spawn_to_frame_s")
        size_mb = path.stat().st_size / 1e6
        print(f"\n{path.name} ({size_mb:,.0f} MB, {base[0]['tensors']} tensors), median of {args.repeat}:")
        print(f"  baseline load+compute_stats (no UI)   {stats_s:7.3f} s")
        print(f"  first frame (from App construction)   {first:7.3f} s   target <= 0.5 s  "
              f"{'ok' if first <= 0.5 else 'MISSED'}")
        print(f"  process start -> first frame          {spawn:7.3f} s   (Python + Textual imports)")
        print(f"  table filled (from App construction)  {filled:7.3f} s   = {filled / stats_s:.2f} x baseline"
              + (f"   target <= 2 s  {'ok' if filled <= 2 else 'MISSED'}" if size_mb > 500 else ""))
        keyed = [r for r in keyed if r["keys"]]
        if keyed:
            print(f"  key press while computing: median {med(keyed, 'key_latency_median_s') * 1000:.0f} ms, "
                  f"max {max(r['key_latency_max_s'] for r in keyed) * 1000:.0f} ms "
                  f"({sum(r['keys'] for r in keyed)} presses, 20 a second; table filled after "
                  f"{med(keyed, 'filled_s'):.2f} s in those runs)")
        assert all(r["rows"] == base[0]["tensors"] for r in app), "table not filled with every tensor"
    return 0


if __name__ == "__main__":
    sys.exit(main())
