"""Write a synthetic DeepSeek-V3-shaped imatrix GGUF (about 1 GB) for benchmarks/bench_stats.py.

Shapes follow llama.cpp's DeepSeek-V3 tensors: 61 blocks, the first 3 dense; MLA attention
(attn_q_a 7168, attn_q_b 1536, attn_kv_a_mqa 7168, attn_kv_b 512, attn_output 16384 inputs);
dense FFN 7168 -> 18432; 256 routed experts (ffn_{gate,up}_exps in_sum2 [256, 7168], ffn_down_exps
[256, 2048]) with per-expert counts, some experts never hit (count 0, zero rows); shared experts;
the router ffn_gate_inp; output.weight.

The file is written with imatui's own writer, one tensor at a time: every Entry is lazy (a seeded
generator), so generation stays far below 400 MB however large the file is (about 50 MB peak RSS).
The numbers are seeded per tensor name: the same file for a given numpy version (numpy's random
streams may change between versions).

    python benchmarks/make_deepseek.py [-o /tmp/imatui-bench/deepseek.imatrix.gguf] [--force]
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from imatui.formats.write import save
from imatui.imatrix import Entry, Imatrix

N_BLOCKS = 61
N_DENSE = 3
N_EXPERTS = 256
N_USED = 8  # experts per token
N_EMBD = 7168
CHUNKS = 100
CHUNK_SIZE = 512
TOKENS = CHUNKS * CHUNK_SIZE
UNUSED_PER_LAYER = 3  # experts never hit, per MoE block (some layers more, see below)

ATTN = {"attn_q_a": N_EMBD, "attn_q_b": 1536, "attn_kv_a_mqa": N_EMBD, "attn_kv_b": 512,
        "attn_output": 16384}
DENSE_FFN = {"ffn_gate": N_EMBD, "ffn_up": N_EMBD, "ffn_down": 18432}
MOE_FFN = {"ffn_gate_inp": N_EMBD, "ffn_gate_shexp": N_EMBD, "ffn_up_shexp": N_EMBD,
           "ffn_down_shexp": 2048}
EXPERTS = {"ffn_gate_exps": N_EMBD, "ffn_up_exps": N_EMBD, "ffn_down_exps": 2048}


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


class _Sums2:
    """Generates one tensor's squared-activation sums on demand (deterministic per name)."""

    def __init__(self, name: str, counts: np.ndarray, n_in: int):
        self.name, self.counts, self.n_in = name, counts, n_in

    def __call__(self) -> np.ndarray:
        rng = np.random.default_rng(_seed(self.name))
        n_mat = self.counts.size
        # a heavy-tailed channel profile shared by all experts, times per-row noise
        profile = rng.lognormal(0.0, 1.5, self.n_in).astype(np.float32)
        out = rng.standard_exponential((n_mat, self.n_in), dtype=np.float32)
        out *= profile
        out *= self.counts.astype(np.float32)[:, None]
        return out


def _expert_counts(name: str, layer: int) -> np.ndarray:
    rng = np.random.default_rng(_seed(name + "#counts"))
    weights = rng.dirichlet(np.full(N_EXPERTS, 0.7))
    counts = rng.multinomial(TOKENS * N_USED, weights).astype(np.float64)
    unused = UNUSED_PER_LAYER + (layer % 5)
    counts[rng.choice(N_EXPERTS, unused, replace=False)] = 0
    return counts


def build() -> Imatrix:
    entries: dict[str, Entry] = {}

    def add(name: str, n_in: int, counts: np.ndarray) -> None:
        entries[name] = Entry(name=name, shape=(counts.size, n_in), counts=counts,
                              _sums2=_Sums2(name, counts, n_in))

    dense = np.array([float(TOKENS)])
    for blk in range(N_BLOCKS):
        for kind, n_in in ATTN.items():
            add(f"blk.{blk}.{kind}.weight", n_in, dense)
        ffn = DENSE_FFN if blk < N_DENSE else MOE_FFN
        for kind, n_in in ffn.items():
            add(f"blk.{blk}.{kind}.weight", n_in, dense)
        if blk >= N_DENSE:
            # the three expert tensors of a block see the same routing, hence the same counts
            counts = _expert_counts(f"blk.{blk}", blk)
            for kind, n_in in EXPERTS.items():
                add(f"blk.{blk}.{kind}.weight", n_in, counts)
    add("output.weight", N_EMBD, dense)
    return Imatrix(entries=dict(sorted(entries.items())), datasets=["synthetic-deepseek-v3"],
                   chunk_count=CHUNKS, chunk_size=CHUNK_SIZE, format="gguf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="/tmp/imatui-bench/deepseek.imatrix.gguf")
    p.add_argument("--force", action="store_true", help="replace the file if it exists")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    im = build()
    n_floats = sum(e.size + e.n_mat for e in im.entries.values())
    t0 = time.perf_counter()
    save(im, out, format="gguf", force=args.force)
    dt = time.perf_counter() - t0
    print(f"wrote {out}: {len(im)} tensors, {n_floats * 4 / 1e9:.2f} GB of floats, "
          f"{out.stat().st_size / 1e9:.2f} GB on disk, in {dt:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
