"""The floor the statistics benchmarks compare against: one numpy pass summing every float of each
imatrix file named (memory-mapped, in 16 MB blocks). bench_stats and bench_diff run it as a process.

    python benchmarks/read_floor.py FILE [FILE ...]
"""

import os
import sys

import numpy as np
from gguf import GGUFReader

total = 0.0
for path in sys.argv[1:]:
    r = GGUFReader(path)
    start = min(int(t.data_offset) for t in r.tensors)
    del r
    n = (os.path.getsize(path) - start) // 4
    m = np.memmap(path, dtype="<f4", mode="r", offset=start, shape=(n,))
    for i in range(0, n, 1 << 22):
        total += float(m[i : i + (1 << 22)].sum(dtype=np.float64))
print(total)
