"""Diff of two ~1 GB imatrix files: time and peak memory, against baselines measured in the same run.

    python benchmarks/bench_diff.py [--a /tmp/imatui-bench/deepseek.imatrix.gguf]
                                    [--b /tmp/imatui-bench/deepseek-b.imatrix.gguf] [--skip-eager] [--repeat 3]

A is the DeepSeek-V3-shaped file of benchmarks/make_deepseek.py (written first when missing); B is
derived from it (each tensor's channels scaled by a seeded smooth profile, a few more experts never
hit), written once with imatui's writer, one tensor at a time.

Each measurement runs in its own process, so its peak RSS (ru_maxrss) is its own:
- read floor: every tensor's sums2 of A and of B read once and summed (what any diff must do);
- stats A + B: `compute_stats` of each file, the existing per-file pass;
- diff (lazy): `load` both (lazy, the default) and `compute_diff`, then format it as JSON;
- diff (eager, --skip-eager to leave out): the same with `load(..., lazy=False)`, what holding both
  files in memory would cost.
Targets: diff peak RSS well under one file's size (lazy: one tensor of each file at a time) where an
eager load needs about both files; diff time within 2x of the two statistics passes (the divergence
takes three float64 logarithms per channel pair, the statistics one per channel).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_A = Path("/tmp/imatui-bench/deepseek.imatrix.gguf")
DEFAULT_B = Path("/tmp/imatui-bench/deepseek-b.imatrix.gguf")


def _make_b(a_path: Path, b_path: Path) -> None:
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
    save(b, b_path, format="gguf")
    print(f"wrote {b_path} ({b_path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)


def _measure(what: str, a_path: str, b_path: str) -> dict:
    from imatui.formats import load

    t = time.perf_counter()
    extra: dict = {}
    if what == "read":
        n, total = 0, 0.0
        for path in (a_path, b_path):
            im = load(path)
            for e in im.entries.values():
                sums2 = np.asarray(e.sums2)
                total += float(sums2.sum(dtype=np.float64))  # touches every value: a real read
                n += int(sums2.size)
        extra["floats"] = n
    elif what == "stats":
        from imatui.stats.tensor import compute_stats

        for path in (a_path, b_path):
            compute_stats(load(path))
    elif what in ("diff", "eager"):
        from imatui.diff_printers import format_diff
        from imatui.stats.diff import compute_diff

        lazy = what == "diff"
        report = compute_diff(load(a_path, lazy=lazy), load(b_path, lazy=lazy))
        t_diff = time.perf_counter() - t
        text = format_diff(report, "json")
        extra.update(diff_s=t_diff, json_bytes=len(text), tensors=len(report.tensors),
                     comparable=len(report.comparable),
                     worst=report.most_different()[0].name, worst_cos=report.most_different()[0].cossim)
    else:
        raise SystemExit(f"unknown measurement {what}")
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"what": what, "seconds": seconds, "peak_mb": peak_mb, **extra}


def _run(what: str, a: Path, b: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", what, "--a", str(a), "--b", str(b)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, default=DEFAULT_A)
    p.add_argument("--b", type=Path, default=DEFAULT_B)
    p.add_argument("--skip-eager", action="store_true", help="leave out the eager (both files in RAM) run")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each measurement N times and keep the fastest (the machine may be shared)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(args.measure, str(args.a), str(args.b))))
        return 0
    if not args.a.exists():
        subprocess.run([sys.executable, str(HERE / "make_deepseek.py"), "-o", str(args.a)], check=True)
    if not args.b.exists():
        _make_b(args.a, args.b)
    size_mb = (args.a.stat().st_size + args.b.stat().st_size) / 2 / 1e6
    print(f"A {args.a} ({args.a.stat().st_size / 1e9:.2f} GB), B {args.b} ({args.b.stat().st_size / 1e9:.2f} GB)")
    # a warm page cache for every run alike: the first pass reads the files from disk
    _run("read", args.a, args.b)
    whats = ["read", "stats", "diff"] + ([] if args.skip_eager else ["eager"])
    runs = {w: min((_run(w, args.a, args.b) for _ in range(args.repeat)), key=lambda r: r["seconds"])
            for w in whats}
    base_py = _run_python_floor()
    for w, r in runs.items():
        print(f"{w:6s} {r['seconds']:7.2f} s  peak RSS {r['peak_mb']:7.0f} MB")
    d, s, rd = runs["diff"], runs["stats"], runs["read"]
    print(f"diff: {d['tensors']} tensors ({d['comparable']} comparable), most different {d['worst']} "
          f"(cos {d['worst_cos']:.4f}); compute {d['diff_s']:.2f} s, JSON {d['json_bytes'] / 1e3:.0f} kB")
    print(f"time:   diff / (stats A + stats B) = {d['seconds'] / s['seconds']:.2f}x; "
          f"diff / read floor = {d['seconds'] / rd['seconds']:.2f}x")
    print(f"memory: diff peak {d['peak_mb']:.0f} MB (python + imports alone {base_py:.0f} MB) "
          f"= {(d['peak_mb'] - base_py) / size_mb:.2f} of one file's size beyond the interpreter")
    if "eager" in runs:
        e = runs["eager"]
        print(f"        eager peak {e['peak_mb']:.0f} MB: lazy diff uses {d['peak_mb'] / e['peak_mb']:.2f}x "
              f"the memory of holding both files, {e['seconds'] / d['seconds']:.2f}x eager's time")
    return 0


def _run_python_floor() -> float:
    code = ("import resource, numpy, imatui.formats, imatui.stats.diff, imatui.diff_printers;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout)


if __name__ == "__main__":
    raise SystemExit(main())
