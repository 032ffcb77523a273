"""Fused Triton kernels for the hooks on CUDA: each reads the activations once and adds in place.

- colsum: for x (T, n), adds sum_t x[t]^2 and sum_t x[t] (float32) into two accumulators, one launch.
- cosine: for a, b (T, h), adds sum_t cos(a_t, b_t) into one float32 slot, one launch.

PyTorch's own ops need a temporary and several reductions per input, which made the hooks cost a third
to twice the forward pass of a small model on an H200; these kernels are used whenever the input is a
CUDA tensor and Triton imports (IMATUI_NO_TRITON=1 turns them off). Sums are added with atomics, so
the order of float additions varies from run to run (results agree to float rounding).
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # pragma: no cover - exercised on CUDA machines only
    if os.environ.get("IMATUI_NO_TRITON"):
        raise ImportError("disabled by IMATUI_NO_TRITON")
    import triton
    import triton.language as tl

    @triton.jit
    def _colsum_kernel(x_ptr, s2_ptr, s_ptr, keep_ptr, T, N, stride_t, ROWS: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, KEEP: tl.constexpr):
        # element-wise accumulation in registers; one reduction and one atomic per column at the end
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        acc2 = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        t0 = pid_t * ROWS
        for i in range(0, ROWS, BLOCK_T):
            rows = t0 + i + tl.arange(0, BLOCK_T)
            m = (rows[:, None] < T) & cmask[None, :]
            v = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :], mask=m, other=0.0)
            v = v.to(tl.float32)
            acc2 += v * v
            acc += v
        t2 = tl.sum(acc2, axis=0)
        t1 = tl.sum(acc, axis=0)
        tl.atomic_add(s2_ptr + cols, t2, mask=cmask)
        tl.atomic_add(s_ptr + cols, t1, mask=cmask)
        if KEEP:  # the same sums into a zeroed (2, N) buffer, for the layers that share this input
            tl.atomic_add(keep_ptr + cols, t2, mask=cmask)
            tl.atomic_add(keep_ptr + N + cols, t1, mask=cmask)

    @triton.jit
    def _cosine_kernel(a_ptr, b_ptr, out_ptr, T, H, stride_a, stride_b, ROWS: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
        pid = tl.program_id(0)
        total = tl.zeros([BLOCK_T], dtype=tl.float32)
        for r0 in range(0, ROWS, BLOCK_T):
            rows = pid * ROWS + r0 + tl.arange(0, BLOCK_T)
            rmask = rows < T
            dot = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
            na = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
            nb = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
            for h0 in range(0, H, BLOCK_H):
                cols = h0 + tl.arange(0, BLOCK_H)
                m = rmask[:, None] & (cols[None, :] < H)
                a = tl.load(a_ptr + rows[:, None].to(tl.int64) * stride_a + cols[None, :], mask=m, other=0.0)
                b = tl.load(b_ptr + rows[:, None].to(tl.int64) * stride_b + cols[None, :], mask=m, other=0.0)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
                dot += a * b
                na += a * a
                nb += b * b
            d = tl.sum(dot, axis=1)
            n2 = tl.sum(na, axis=1) * tl.sum(nb, axis=1)
            cos = d / tl.sqrt(tl.maximum(n2, 1e-16))
            total += tl.where(rmask, cos, 0.0)
        tl.atomic_add(out_ptr, tl.sum(total, axis=0))

    AVAILABLE = True
except Exception:  # noqa: BLE001 - no Triton, or a Triton that cannot compile here
    AVAILABLE = False


def usable(x: torch.Tensor) -> bool:
    return AVAILABLE and x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


_SMS: dict[int, int] = {}


def _sms(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def _rows_per_program(T: int, other_programs: int, max_programs: int, block_t: int) -> int:
    """The fewest rows per program, a power of two >= block_t (few compiled variants), that keep the
    grid within max_programs: enough programs to fill the GPU, few atomics per address."""
    rows = block_t
    while other_programs * triton.cdiv(T, rows) > max_programs and rows < 16384:
        rows *= 2
    return rows


# Block shapes measured on an H200 with benchmarks/bench_colsum.py --sweep (bfloat16, 32768 and 65536
# tokens of 576 and 1536 channels): colsum at 1.0-1.2x and cosine at 1.5x the time torch takes to sum
# the same bytes once, against 1.25-1.5x and 1.9x with the first choice (128-wide blocks, fewer programs).


def colsum_(x: torch.Tensor, sums2: torch.Tensor, sums: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    """sums2 += (x*x).sum(0); sums += x.sum(0) for x (T, n) on CUDA; sums2/sums float32 (n,) contiguous.

    With keep, a zeroed float32 (2, n) buffer, the same two sums are also added into keep[0] and keep[1].
    """
    x = x if x.stride(-1) == 1 else x.contiguous()
    T, N = x.shape
    key = (T, N, x.device)
    grid = _GRIDS.get(key)
    if grid is None:
        col_blocks = triton.cdiv(N, 64)
        rows = _rows_per_program(T, col_blocks, 12 * _sms(x.device), 16)
        grid = _GRIDS[key] = (col_blocks, triton.cdiv(T, rows), rows)
    with _on(x.device):
        _colsum_kernel[grid[:2]](x, sums2, sums, sums2 if keep is None else keep, T, N, x.stride(0),
                                 ROWS=grid[2], BLOCK_T=16, BLOCK_N=64, KEEP=keep is not None, num_warps=4)


_GRIDS: dict = {}


def _on(device: torch.device):
    """Triton launches on the current CUDA device and its current stream, not on the tensors' device: a
    model spread over GPUs (--device-map auto) needs the layer's own GPU made current for the launch,
    or the kernel runs on another GPU, unordered with the stream that computes its input."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def cosine_sum_(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out[0] += sum_t cos(a_t, b_t) for a, b (T, h) on CUDA; out a float32 view of one element."""
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    T, H = a.shape
    block_h = 64 if H <= 1024 else 128
    block_t = 16 if block_h == 64 else 8
    rows = _rows_per_program(T, 1, 8 * _sms(a.device), 32)
    with _on(a.device):
        _cosine_kernel[(triton.cdiv(T, rows),)](a, b, out, T, H, a.stride(0), b.stride(0), ROWS=rows,
                                                BLOCK_T=block_t, BLOCK_H=block_h, num_warps=8)
