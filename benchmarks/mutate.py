"""Mutation run: damaged imatrix files through the readers, the statistics and the diff.

Each case takes a valid file (small GGUF and legacy .dat files built here: dense, MoE with an unused
expert, with in_sum; or the SmolLM2 fixtures) and damages it in one seeded way: bit flips in or out
of the header, a truncation, a duplicated or deleted span, an absurd integer written into the
header, NaN or Inf written into the data. The case runs in a forked child with a memory cap
(RLIMIT_AS) and a timeout: load (lazy and eager), compute_stats, compute_diff against the
undamaged file, the text printers. The only acceptable outcomes are a result or an ImatrixError;
a traceback, a numpy RuntimeWarning (it would reach the user's stderr), a signal, running out of the
cap or a hang is a failure.

    python benchmarks/mutate.py --cases 5000 [--seed 1] [--jobs 2]

tests/test_mutation.py runs a few hundred cases of the same harness in the suite.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# imported here, once: a forked child then pays no import
from imatui.diff_printers import format_diff  # noqa: E402
from imatui.errors import ImatrixError  # noqa: E402
from imatui.formats import load, save  # noqa: E402
from imatui.imatrix import Entry, Imatrix  # noqa: E402
from imatui.printers import format_csv, format_json, format_table  # noqa: E402
from imatui.stats import compute_stats  # noqa: E402
from imatui.stats.convergence import channel_means  # noqa: E402
from imatui.stats.diff import channel_pair, compute_diff  # noqa: E402

KINDS = ("flip_header", "flip_data", "truncate", "duplicate", "delete", "absurd_int", "non_finite")
MEMORY_CAP = 1 << 30  # bytes of address space a case may add to what the process already maps
TIMEOUT_S = 60.0  # a case takes 0.02 to 1.5 s; a busy 2-core machine can stretch that tenfold


@dataclass
class Seed:
    """A valid file to damage and what is known about its layout."""

    name: str
    data: bytes
    header_end: int  # bytes before the first tensor's data (GGUF), or before the first values (dat)
    suffix: str


def _imatrix(rng: np.random.Generator, with_sums: bool) -> Imatrix:
    entries = {}
    for layer in range(3):
        for kind, n_in in (("attn_q", 16), ("ffn_down", 24)):
            name = f"blk.{layer}.{kind}.weight"
            sums2 = rng.lognormal(0, 1, size=(1, n_in)).astype(np.float32)
            sums = rng.normal(size=(1, n_in)).astype(np.float32) if with_sums else None
            entries[name] = Entry.from_arrays(name, sums2, [40.0], sums)
        name = f"blk.{layer}.ffn_down_exps.weight"
        sums2 = rng.lognormal(0, 1, size=(4, 8)).astype(np.float32)
        counts = np.array([10.0, 0.0, 7.0, 3.0])
        sums2[1] = 0.0  # expert 1 never saw a token
        sums = rng.normal(size=(4, 8)).astype(np.float32) if with_sums else None
        entries[name] = Entry.from_arrays(name, sums2, counts, sums)
    return Imatrix(entries=dict(sorted(entries.items())), datasets=["a.txt"], chunk_count=2, chunk_size=512)


def _gguf_header_end(data: bytes) -> int:
    """Start of the tensor data: the smallest tensor data offset (gguf-py knows it)."""
    from gguf import GGUFReader

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        reader = GGUFReader(f.name, "r")
        return int(reader.data_offset)


def seeds(folder: Path, fixtures: Path | None = None) -> list[Seed]:
    rng = np.random.default_rng(0)
    out: list[Seed] = []
    for with_sums in (False, True):
        p = save(_imatrix(rng, with_sums), folder / f"seed-{int(with_sums)}.imatrix.gguf")
        data = p.read_bytes()
        out.append(Seed(p.name, data, _gguf_header_end(data), ".gguf"))
    p = save(_imatrix(rng, False), folder / "seed.imatrix.dat", format="dat")
    data = p.read_bytes()
    name_len = struct.unpack_from("<i", data, 4)[0]
    out.append(Seed(p.name, data, 4 + 4 + name_len + 8, ".dat"))
    if fixtures is not None:
        for name in ("smollm2-prose.imatrix.gguf", "smollm2-prose.imatrix.dat"):
            if (fixtures / name).exists():
                data = (fixtures / name).read_bytes()
                end = (_gguf_header_end(data) if name.endswith(".gguf")
                       else 4 + 4 + struct.unpack_from("<i", data, 4)[0] + 8)
                out.append(Seed(name, data, end, Path(name).suffix))
    return out


ABSURD = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 62, (1 << 64) - 1)


def mutate(seed: Seed, rng: random.Random) -> tuple[str, bytes]:
    """One seeded damage of `seed`: (what was done, the damaged bytes)."""
    data = bytearray(seed.data)
    n = len(data)
    kind = rng.choice(KINDS)
    if kind == "flip_header":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(0, seed.header_end)
            data[i] ^= 1 << rng.randrange(8)
        what = kind
    elif kind == "flip_data":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(seed.header_end, n)
            data[i] ^= 1 << rng.randrange(8)
        what = kind
    elif kind == "truncate":
        cut = rng.randrange(0, n)
        data = data[:cut]
        what = f"truncate at {cut}"
    elif kind == "duplicate":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 256))
        data[b:b] = data[a:b]
        what = f"duplicate {a}:{b}"
    elif kind == "delete":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 256))
        del data[a:b]
        what = f"delete {a}:{b}"
    elif kind == "absurd_int":
        width = rng.choice((4, 8))
        i = rng.randrange(0, max(1, seed.header_end - width)) & ~3
        value = rng.choice(ABSURD) & ((1 << (8 * width)) - 1)
        data[i:i + width] = value.to_bytes(width, "little")
        what = f"absurd u{8 * width} {value} at {i}"
    else:
        i = seed.header_end + (rng.randrange(0, max(1, n - seed.header_end - 4)) & ~3)
        value = rng.choice((float("nan"), float("inf"), float("-inf")))
        data[i:i + 4] = struct.pack("<f", value)
        what = f"{value} at {i}"
    return what, bytes(data)


def _exercise(path: Path, original: Path) -> str:
    """What a user can do with a file: every reader path, statistics, diff, the printers."""
    try:
        eager = load(path, lazy=False)
        imatrix = load(path)
        report = compute_stats(imatrix)
        format_table(report)
        format_json(report)
        format_csv(report)
        reference = load(original)
        diff = compute_diff(reference, imatrix)
        format_diff(diff, "table")
        for name in list(eager.entries)[:3]:
            channel_pair(reference, eager, name)
            eager.entries[name].mean_importance()
        channel_means(eager)
    except ImatrixError:
        return "refused"
    return "ok"


def _limit_memory() -> None:
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        vm = 0
    cap = vm + MEMORY_CAP
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def run_case(path: Path, original: Path, timeout: float = TIMEOUT_S) -> tuple[str, str]:
    """(outcome, detail) of one damaged file, run in a forked child: "ok", "refused", or a failure:
    "traceback", "signal N", "hang"."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.close(read_fd)
            _limit_memory()
            # one CPU: the statistics then run their serial path (the same code as each worker's share),
            # with no thread pool in a child forked from a process that may run threads
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            # a RuntimeWarning would reach the user's stderr beside the one-line error: a failure too
            warnings.simplefilter("error", RuntimeWarning)
            outcome = _exercise(path, original)
            os.write(write_fd, outcome.encode())
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the case
            try:
                os.write(write_fd, ("traceback\n" + traceback.format_exc()).encode()[-8000:])
            except BaseException:  # noqa: BLE001
                pass
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", f"no result in {timeout:.0f} s"
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}", text
    if text.startswith("traceback"):
        return "traceback", text
    if text in ("ok", "refused"):
        return text, ""
    return "traceback", text or f"exit status {os.WEXITSTATUS(status)}"


def run(cases: int, seed: int = 1, folder: Path | None = None, fixtures: Path | None = None,
        progress: bool = False, timeout: float = TIMEOUT_S,
        ) -> tuple[dict[str, int], list[tuple[str, str, str, str]]]:
    """Run `cases` seeded cases; returns (count per outcome, failures as (seed file, "case N: damage",
    outcome, detail)); case N of a seed is the same damage on every run."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    failures: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="imatui-mutate-", dir=folder) as tmp:
        tmp_path = Path(tmp)
        pool = seeds(tmp_path, fixtures)
        originals = {}
        for s in pool:
            originals[s.name] = tmp_path / f"orig-{s.name}"
            originals[s.name].write_bytes(s.data)
        _exercise(originals[pool[0].name], originals[pool[0].name])  # first-call set-up, once, here
        started = time.monotonic()
        for i in range(cases):
            s = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            what, data = mutate(s, rng)
            path = tmp_path / f"case{s.suffix}"
            path.write_bytes(data)
            old = time.time() - 3600  # not a file being written
            os.utime(path, (old, old))
            outcome, detail = run_case(path, originals[s.name], timeout)
            key = outcome if outcome in ("ok", "refused") else "FAIL " + outcome
            counts[key] = counts.get(key, 0) + 1
            if outcome not in ("ok", "refused"):
                failures.append((s.name, f"case {i}: {what}", outcome, detail))
            if progress and (i + 1) % 250 == 0:
                print(f"  {i + 1} cases, {time.monotonic() - started:.0f} s: {counts}", file=sys.stderr)
    return counts, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds a case may take")
    ap.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures",
                    help="also damage the SmolLM2 fixtures found here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    counts, failures = run(args.cases, args.seed, fixtures=args.fixtures, progress=True, timeout=args.timeout)
    elapsed = time.monotonic() - started
    print(f"{args.cases} cases (seed {args.seed}) in {elapsed:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, what, outcome, detail in failures[:20]:
        print(f"--- {name}: {what}: {outcome}\n{detail.strip()[-2000:]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
