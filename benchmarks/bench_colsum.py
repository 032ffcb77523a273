"""The collector's column-sum kernel against the GPU's read bandwidth (CUDA only).

    python benchmarks/bench_colsum.py            # SmolLM2 widths (576, 1536), 65536 tokens, bfloat16
    python benchmarks/bench_colsum.py --sweep    # also try block shapes and warps, to pick the defaults

For x (T, n) it times kernels.colsum_ (sum of squares and sum per column, added into float32
accumulators) and, as the baseline in the same run, torch's sum of every element of x (one read of
x at about the memory bandwidth). Reported: each kernel's time and GB/s of x read, and the ratio to
the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imatui.collect import kernels  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="65536", help="comma-separated token counts")
    ap.add_argument("--widths", default="576,1536")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    if not (torch.cuda.is_available() and kernels.AVAILABLE):
        raise SystemExit("needs CUDA and Triton")
    import triton
    from triton.testing import do_bench

    dtype = getattr(torch, args.dtype)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()} ({sms} SMs), {args.dtype}")

    def line(label, t, base, gb):
        print(f"  {label:44s} {t * 1e3:8.1f} us  {gb / t * 1e3:6.0f} GB/s  {t / base:5.2f}x baseline")

    for T, n in itertools.product((int(t) for t in args.tokens.split(",")), (int(w) for w in args.widths.split(","))):
        x = torch.randn(T, n, device="cuda", dtype=dtype)
        y = torch.randn(T, n, device="cuda", dtype=dtype)
        s2 = torch.zeros(n, device="cuda")
        s1 = torch.zeros(n, device="cuda")
        gb = x.numel() * x.element_size() / 1e9
        base = do_bench(lambda: x.sum(dtype=torch.float32))
        print(f"T={T} n={n}: x is {gb * 1e3:.0f} MB; baseline (torch sum of all of x): {base * 1e3:.1f} us, "
              f"{gb / base * 1e3:.0f} GB/s")
        line("colsum_", do_bench(lambda: kernels.colsum_(x, s2, s1)), base, gb)
        keep = torch.zeros(2, n, device="cuda")
        line("colsum_ with keep", do_bench(lambda: kernels.colsum_(x, s2, s1, keep)), base, gb)
        line("torch ops (no Triton)", do_bench(lambda: torch.stack((x.float().square().sum(0), x.float().sum(0)))),
             base, gb)
        out = torch.zeros(1, device="cuda")
        line("cosine_sum_ (reads x and y)", do_bench(lambda: kernels.cosine_sum_(x, y, out)), base, 2 * gb)
        s2.zero_(), s1.zero_()
        kernels.colsum_(x, s2, s1)
        ref = x.double().square().sum(0)
        out.zero_()
        kernels.cosine_sum_(x, y, out)
        cref = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).sum()
        print(f"  relative error: sum of squares {float(((s2.double() - ref).abs() / ref).max()):.1e}, "
              f"cosine sum {abs(float(out) - float(cref)) / T:.1e} per token")
        if not args.sweep:
            continue
        results = []
        for bn, bt, rows, warps in itertools.product((64, 128), (16, 32), (128, 256, 512, 1024, 2048), (4, 8)):
            grid = (triton.cdiv(n, bn), triton.cdiv(T, rows))

            def run(bn=bn, bt=bt, rows=rows, warps=warps, grid=grid):
                kernels._colsum_kernel[grid](x, s2, s1, s2, T, n, x.stride(0), ROWS=rows,
                                             BLOCK_T=bt, BLOCK_N=bn, KEEP=False, num_warps=warps)
            results.append((do_bench(run), f"colsum BLOCK_N={bn} BLOCK_T={bt} ROWS={rows} w={warps} "
                                           f"({grid[0] * grid[1]} prog)"))
        results.sort()
        for t, label in results[:5]:
            line(label, t, base, gb)
        results = []
        for bt, bh, rows, warps in itertools.product((8, 16, 32), (64, 128), (32, 64, 128, 256, 512), (4, 8)):
            if rows < bt:
                continue
            grid = (triton.cdiv(T, rows),)

            def run(bt=bt, bh=bh, rows=rows, warps=warps, grid=grid):
                kernels._cosine_kernel[grid](x, y, out, T, n, x.stride(0), y.stride(0), ROWS=rows, BLOCK_T=bt,
                                             BLOCK_H=bh, num_warps=warps)
            results.append((do_bench(run), f"cosine BLOCK_T={bt} BLOCK_H={bh} ROWS={rows} w={warps} "
                                           f"({grid[0]} prog)"))
        results.sort()
        for t, label in results[:5]:
            line(label, t, base, 2 * gb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
