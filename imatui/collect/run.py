"""`imatui collect MODEL -f TEXT -o imatrix.gguf ...`: collect an imatrix with torch, write what llama.cpp reads.

The loop works in rounds of whole chunks (each rank of a torchrun job takes its share of a round);
rounds end on --output-frequency / --save-frequency boundaries so checkpoints land exactly where
llama-imatrix puts them. Sums live on the device (float32) between checkpoints; at a checkpoint they
are summed over ranks, added to float64 totals on the host, and rank 0 writes the file atomically
(imatui.formats.write.save: temporary file in the same folder, fsync, rename), so a reader or a kill
never meets a half-written file. Ctrl-C (or SIGTERM) finishes the current round, writes a checkpoint
and exits with 130; `--resume` continues from it.
"""

from __future__ import annotations

import argparse
import glob
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imatui.errors import ImatrixError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

KEY_SIMILARITY = "imatui.layer_similarity"
KEY_SIMILARITY_TOKENS = "imatui.layer_similarity_tokens"
KEY_CHUNKS_DONE = "imatui.collect.chunks_done"
KEY_DIGEST = "imatui.collect.text_digest"
KEY_NLL = "imatui.collect.nll"
KEY_NLL_TOKENS = "imatui.collect.nll_tokens"
KEY_MODEL = "imatui.collect.model"


class UsageError(Exception):
    """Bad arguments or input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see imatui collect --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imatui collect",
                description="Collect an importance matrix from a transformers model with torch forward hooks "
                            "and write it as llama-imatrix does (GGUF, or .dat by suffix).")
    p.add_argument("model", help="a transformers model folder, or a .gguf model file (loaded dequantized)")
    p.add_argument("-f", "--file", required=True, help="calibration text file")
    p.add_argument("-o", "--output", default="imatrix.gguf", help="output file (default imatrix.gguf)")
    p.add_argument("--chunks", type=int, default=-1, help="process at most N chunks (default: all)")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("-b", "--batch-size", type=int, default=2048,
                   help="tokens per forward pass, rounded down to whole chunks, at least one (default 2048)")
    p.add_argument("--output-frequency", type=int, default=10, help="write a checkpoint every N chunks (10)")
    p.add_argument("--save-frequency", type=int, default=0, help="also keep a snapshot OUTPUT.at_N every N chunks")
    p.add_argument("--process-output", action="store_true", help="collect the output head (lm_head) too")
    p.add_argument("--no-ppl", action="store_true", help="do not compute perplexity")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where to run (default: cuda when available)")
    p.add_argument("--device-map", choices=("auto",), help="spread a model too large for one device (accelerate)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"), default="auto",
                   help="weights and activations dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--in-file", action="append", default=[], metavar="OLD",
                   help="start from this imatrix (repeatable): its sums, counts and datasets come first")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- totals on the host -----------------------------------------------------------------------------
@dataclass
class Totals:
    """float64 sums on the host: what has been flushed from the devices, plus --in-file/--resume data."""

    sums2: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[str, np.ndarray | None] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    prior_chunks: int = 0  # chunks that came from --in-file data (not from this text)
    chunks_done: int = 0  # chunks of this text already in the sums
    sim_sum: np.ndarray | None = None
    sim_tokens: float = 0.0
    nll: float = 0.0
    nll_tokens: float = 0.0
    metadata: dict = field(default_factory=dict)

    def add_imatrix(self, imatrix) -> None:
        for name, e in imatrix.entries.items():
            s2 = np.asarray(e.sums2, dtype=np.float64)
            s = None if e.sums is None else np.asarray(e.sums, dtype=np.float64)
            c = np.asarray(e.counts, dtype=np.float64)
            if name not in self.sums2:
                self.sums2[name], self.sums[name], self.counts[name] = s2.copy(), s, c.copy()
                continue
            if self.sums2[name].shape != s2.shape:
                raise ImatrixError(f"{name} has shape {s2.shape}, but {self.sums2[name].shape} before",
                                   imatrix.path)
            self.sums2[name] += s2
            self.counts[name] += c
            self.sums[name] = None if (self.sums[name] is None or s is None) else self.sums[name] + s

    def add_delta(self, name: str, sums2: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        if name not in self.sums2:
            if not counts.any():
                return  # never reached (yet): llama-imatrix writes only what it saw
            self.sums2[name], self.sums[name], self.counts[name] = sums2.copy(), sums.copy(), counts.copy()
            return
        if self.sums2[name].shape != sums2.shape:
            raise ImatrixError(f"{name}: the model gives shape {sums2.shape} but the earlier data has "
                               f"{self.sums2[name].shape} (another model?)")
        self.sums2[name] += sums2
        self.counts[name] += counts
        if self.sums[name] is not None:
            self.sums[name] += sums

    def to_imatrix(self, chunk_size: int, extra: dict):
        from imatui.imatrix import Entry, Imatrix

        entries = {}
        for name in sorted(self.sums2):
            if not self.counts[name].any():
                continue
            entries[name] = Entry.from_arrays(name, self.sums2[name].astype(np.float32), self.counts[name],
                                              None if self.sums[name] is None
                                              else self.sums[name].astype(np.float32))
        metadata = dict(self.metadata)
        metadata.update(extra)
        return Imatrix(entries=entries, datasets=list(self.datasets),
                       chunk_count=self.prior_chunks + self.chunks_done, chunk_size=chunk_size,
                       metadata=metadata)


# -- progress ---------------------------------------------------------------------------------------
class Progress:
    """One line on stderr: chunks, tokens/s, running perplexity, time left (redrawn in a terminal)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self.tokens = 0

    def update(self, done: int, tokens: int, ppl: float | None, final: bool = False) -> None:
        if not self.enabled:
            return
        self.tokens += tokens
        now = time.perf_counter()
        if not self.tty and not final and now - self.last_print < 5.0:
            return
        self.last_print = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.tokens / elapsed
        width = 24
        frac = done / self.total if self.total else 1.0
        bar = "█" * int(frac * width) + "·" * (width - int(frac * width))
        left = ""
        if done > self.start and done < self.total:
            secs = elapsed / (done - self.start) * (self.total - done)
            left = f"  ETA {int(secs // 60)}m{int(secs % 60):02d}s"
        ppl_s = f"  ppl {ppl:.4f}" if ppl is not None else ""
        line = f"[{bar}] {done}/{self.total} chunks  {rate:,.0f} tok/s{ppl_s}{left}"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# -- helpers ----------------------------------------------------------------------------------------
def _note(message: str) -> None:
    print(f"imatui collect: {message}", file=sys.stderr, flush=True)


def _resolve_model_path(model: str) -> tuple[Path, str | None]:
    p = Path(model)
    if not p.exists():
        raise UsageError(f"{model}: no such model file or folder")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise UsageError(f"{model}: a model is a transformers folder or a .gguf file")
        return p.parent, p.name
    if (p / "config.json").is_file():
        return p, None
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return p, ggufs[0].name
    raise UsageError(f"{model}: not a transformers model folder (no config.json)"
                     + (f" and {len(ggufs)} .gguf files: name one" if ggufs else ""))


def _boundary_after(done: int, prior: int, freqs: list[int], limit: int) -> int:
    """The first chunk count > done where a checkpoint or snapshot falls (llama counts prior chunks too)."""
    best = limit
    for f in freqs:
        if f > 0:
            nxt = ((prior + done) // f + 1) * f - prior
            best = min(best, nxt)
    return max(best, done + 1)


def _snapshots_in_the_way(out: Path, save_frequency: int, first_count: int, last_count: int) -> list[Path]:
    """Existing OUT.at_N files that this run would write: N a multiple of --save-frequency with
    first_count < N <= last_count (counts include the prior chunks, as llama-imatrix's names do)."""
    if save_frequency <= 0 or last_count <= first_count:
        return []
    folder = out.parent if str(out.parent) else Path(".")
    found = []
    for p in folder.glob(f"{glob.escape(out.name)}.at_*"):
        n = p.name[len(out.name) + len(".at_"):]
        if n.isdigit() and first_count < int(n) <= last_count and int(n) % save_frequency == 0:
            found.append((int(n), p))
    return [p for _, p in sorted(found)]


def _clean_stale_tmp(out: Path) -> None:
    """Temporary files left by a writer that was killed mid-write (save's own naming)."""
    folder = out.parent if str(out.parent) else Path(".")
    for stale in folder.glob(f".{out.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


# -- main ---------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except UsageError as exc:
        print(f"imatui: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImatrixError as exc:
        print(f"imatui: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except ImportError as exc:  # torch / transformers / accelerate missing
        print(f"imatui: collect needs the 'collect' extra (pip install 'imatui[collect]'): {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a file that could not be read or written (disk full, permission denied)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"imatui: {where}{exc.strerror or _first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RuntimeError, MemoryError) as exc:  # torch's errors, CUDA out of memory among them
        msg = _first_line(exc)
        hint = " (a smaller --batch-size may fit)" if isinstance(exc, MemoryError) or "out of memory" in msg else ""
        print(f"imatui: collect stopped: {msg}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from imatui.formats import load

    text_path = Path(args.file)
    if not text_path.is_file():
        raise UsageError(f"{args.file}: no such text file")
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"{args.output}: is a directory")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        if out.parent.exists():
            raise UsageError(f"{args.output}: {out.parent} is not a folder")
        raise UsageError(f"{args.output}: folder {out.parent} does not exist")
    if out.exists() and not (args.force or args.resume):
        raise UsageError(f"{args.output}: already exists (use --force to replace it or --resume to continue)")
    if args.ctx_size < 2:
        raise UsageError(f"context size {args.ctx_size} is too small")
    if args.output_frequency < 1:
        raise UsageError("--output-frequency must be at least 1")
    if args.save_frequency < 0:
        raise UsageError("--save-frequency must be 0 (off) or more")
    folder, gguf_file = _resolve_model_path(args.model)
    try:
        text = text_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    in_files = [load(p, lazy=False) for p in args.in_file]
    resume_from = load(out, lazy=False) if (args.resume and out.exists()) else None

    import torch

    from imatui.collect import distributed as D
    from imatui.collect.chunks import make_chunks, match_llama_pretokenizer, shortfall, text_digest, tokenize
    from imatui.collect.hooks import Collector

    device_kind = args.device
    if device_kind == "auto":
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device")
    dist = D.init(device_kind)
    device = torch.device(f"cuda:{dist.local_rank}" if device_kind == "cuda" else "cpu")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device_kind == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.device_map:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise UsageError("--device-map auto needs accelerate (pip install accelerate)") from None
        if dist.active:
            raise UsageError("--device-map cannot be combined with torchrun data parallelism")

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not dist.is_main:
        transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    def cannot_load(exc: Exception) -> UsageError:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return UsageError(f"{args.model}: cannot load the model ({msg})")

    kw = {"local_files_only": True}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise cannot_load(exc) from None

    if gguf_file:
        match_llama_pretokenizer(tokenizer, folder / gguf_file)
    tokens, add_bos = tokenize(tokenizer, text)
    try:
        chunks = make_chunks(tokens, args.ctx_size, args.chunks, add_bos, tokenizer.bos_token_id)
    except ValueError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    digest = text_digest(text, args.ctx_size)

    totals = Totals()
    if resume_from is not None:
        if resume_from.chunk_size and resume_from.chunk_size != args.ctx_size:
            raise UsageError(f"{out}: was collected with -c {resume_from.chunk_size}, not {args.ctx_size}")
        md = resume_from.metadata
        if md.get(KEY_DIGEST) not in (None, digest):
            raise UsageError(f"{out}: was collected from another text (or context size); cannot resume")
        totals.add_imatrix(resume_from)
        totals.datasets = list(resume_from.datasets)
        totals.chunks_done = int(md.get(KEY_CHUNKS_DONE, resume_from.chunk_count))
        totals.prior_chunks = resume_from.chunk_count - totals.chunks_done
        totals.metadata = {k: v for k, v in md.items() if k.startswith("imatui.") or k.startswith("general.")}
        if KEY_SIMILARITY in md and md.get(KEY_SIMILARITY_TOKENS):
            totals.sim_tokens = float(md[KEY_SIMILARITY_TOKENS])
            totals.sim_sum = np.asarray(md[KEY_SIMILARITY], dtype=np.float64) * totals.sim_tokens
        totals.nll = float(md.get(KEY_NLL, 0.0))
        totals.nll_tokens = float(md.get(KEY_NLL_TOKENS, 0))
        if args.in_file:
            _note("--resume: the --in-file data is already in the output; not adding it again")
    else:
        for imx in in_files:
            totals.add_imatrix(imx)
            totals.datasets.extend(imx.datasets)
            totals.prior_chunks += imx.chunk_count
            totals.metadata.update({k: v for k, v in imx.metadata.items()
                                    if not k.startswith("imatui.collect.") and not k.startswith(KEY_SIMILARITY)})
        totals.datasets.append(str(args.file))

    # snapshots OUT.at_N of an earlier run are the user's: refused here, before the model is loaded
    # (with --resume, the counts already done are never written again, so only later ones count)
    in_the_way = _snapshots_in_the_way(out, args.save_frequency, totals.prior_chunks + totals.chunks_done,
                                       totals.prior_chunks + chunks.n_chunk)
    if in_the_way and not args.force:
        more = f" and {len(in_the_way) - 1} more snapshot(s) this run would write" if len(in_the_way) > 1 else ""
        raise UsageError(f"{in_the_way[0]}: already exists{more} (use --force to replace)")

    try:
        # transformers 5 calls it dtype; older releases torch_dtype (and would ignore dtype)
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        mkw = dict(kw, **{dtype_kw: dtype})
        if args.device_map:
            mkw["device_map"] = args.device_map
        model = AutoModelForCausalLM.from_pretrained(str(folder), **mkw)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise cannot_load(exc) from None
    model.eval()
    if not args.device_map:
        model.to(device)
    input_device = model.get_input_embeddings().weight.device

    try:
        collector = Collector(model, process_output=args.process_output)
    except ValueError as exc:  # no decoder blocks, an attention the MLA inputs cannot be computed with
        raise UsageError(f"{args.model}: {exc}") from None
    if dist.is_main:
        if collector.unmapped:
            _note(f"{len(collector.unmapped)} layer(s) have no GGUF name in gguf's tables for "
                  f"'{model.config.model_type}' and are not collected: {', '.join(collector.unmapped[:6])}"
                  + (" ..." if len(collector.unmapped) > 6 else ""))
        if collector.unsupported:
            _note(f"expert layout not supported, not collected: {', '.join(collector.unsupported[:6])}")
        if not collector.mapper.exact_arch:
            _note(f"gguf has no architecture '{model.config.model_type}'; using llama's tensor names")
        if args.force or args.resume:  # a writer killed mid-write left its temporary file
            _clean_stale_tmp(out)

    n_chunk = chunks.n_chunk
    ctx = chunks.ctx
    per_step = max(1, args.batch_size // ctx)
    start_done = totals.chunks_done
    if dist.is_main:
        short = shortfall(args.chunks, chunks)
        if short is not None:
            _note(short)
        what = f"{n_chunk} chunks of {ctx} tokens ({len(tokens)} tokens in the text)"
        if start_done:
            what += f", resuming after chunk {start_done}"
        _note(f"{what}; {per_step * dist.world} chunk(s) per step on {dist.world} x {device_kind} "
              f"({dtype_name}); {len(collector.accumulators)} weights hooked")
        step_chunks = per_step * dist.world
        cuts = [f"--{flag} {n}" for flag, n in (("output-frequency", args.output_frequency),
                                                 ("save-frequency", args.save_frequency)) if 0 < n < step_chunks]
        if cuts and n_chunk - start_done > min(args.output_frequency, args.save_frequency or n_chunk):
            _note(f"{' and '.join(cuts)} cut(s) the {step_chunks}-chunk steps short at every checkpoint; "
                  f"a frequency of {step_chunks} or more keeps full steps (faster on a GPU)")
    if start_done >= n_chunk:
        if dist.is_main:
            _note(f"{out}: already holds all {n_chunk} chunks; nothing to do")
        D.shutdown(dist, sync=True)
        return 0

    compute_ppl = not args.no_ppl
    first = chunks.ppl_first
    keep = 0 if args.process_output else (ctx - first if compute_ppl else 1)
    # only the logits the perplexity needs (all of them when lm_head is collected); asked for only when
    # the model's forward takes the argument (a retry after a failed call would count tokens twice)
    import inspect

    params = inspect.signature(model.forward).parameters
    keep_kw = {"logits_to_keep": keep} if "logits_to_keep" in params else (
        {"num_logits_to_keep": keep} if "num_logits_to_keep" in params else {})
    nll_dev = torch.zeros((), dtype=torch.float64, device=input_device)
    nll_tok = 0

    stop = {"flag": False}

    def on_signal(signum, frame):  # first: finish the round and checkpoint; second: stop now
        if stop["flag"]:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop["flag"] = True
        if dist.is_main:
            sys.stderr.write("\nimatui collect: stopping after this step (Ctrl-C again to stop at once)\n")

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    progress = Progress(n_chunk, start_done, enabled=dist.is_main and not args.quiet)

    def checkpoint(snapshot: bool) -> None:
        nonlocal nll_tok
        deltas, sim, sim_tok = collector.flush()
        names = list(deltas)
        tail = np.concatenate([sim, sim_tok, np.array([float(nll_dev.item()), float(nll_tok)])])
        nll_dev.zero_()
        nll_tok = 0
        if not dist.active:
            # one process: add each weight's sums as they are; one array of all of them (a second
            # copy of every sum in host memory) is only needed for the all-reduce below
            for name in names:
                totals.add_delta(name, *deltas.pop(name))
        else:
            parts = []
            for name in names:
                s2, s, c = deltas[name]
                parts += [s2.reshape(-1), s.reshape(-1), c]
            flat = D.all_sum(dist, np.concatenate(parts + [tail]), device)
            del parts
            if not dist.is_main:
                return
            pos = 0
            for name in names:
                s2, s, c = deltas.pop(name)
                n2, nc = s2.size, c.size
                totals.add_delta(name, flat[pos:pos + n2].reshape(s2.shape),
                                 flat[pos + n2:pos + 2 * n2].reshape(s2.shape), flat[pos + 2 * n2:pos + 2 * n2 + nc])
                pos += 2 * n2 + nc
            tail = flat[pos:].copy()  # a view would keep all of flat alive in totals.sim_sum
        nb = collector.n_blocks
        sim_g, simtok_g = tail[:nb], tail[nb:2 * nb]
        totals.nll += tail[2 * nb]
        totals.nll_tokens += tail[2 * nb + 1]
        if simtok_g.any():
            totals.sim_sum = sim_g if totals.sim_sum is None else totals.sim_sum + sim_g
            totals.sim_tokens += float(simtok_g.max())
        write(snapshot)

    def write(snapshot: bool) -> None:
        from imatui.formats.write import save

        from imatui.formats.gguf import KEY_FINISHED

        extra = {KEY_CHUNKS_DONE: totals.chunks_done, KEY_DIGEST: digest, KEY_MODEL: str(args.model),
                 KEY_FINISHED: totals.chunks_done >= n_chunk}  # the live view's "finished"
        if totals.sim_sum is not None and totals.sim_tokens > 0:
            extra[KEY_SIMILARITY] = [float(v) for v in totals.sim_sum / totals.sim_tokens]
            extra[KEY_SIMILARITY_TOKENS] = int(totals.sim_tokens)
        if totals.nll_tokens > 0:
            extra[KEY_NLL] = float(totals.nll)
            extra[KEY_NLL_TOKENS] = int(totals.nll_tokens)
        imatrix = totals.to_imatrix(ctx, extra)
        targets = [out] + ([Path(f"{out}.at_{imatrix.chunk_count}")] if snapshot else [])
        for target in targets:
            try:
                save(imatrix, target, force=True)  # snapshots in the way were refused at the start
            except OSError as exc:  # disk full, permission denied: name the file we meant to write
                raise ImatrixError(f"cannot write it: {exc.strerror or _first_line(exc)}", target) from None

    def running_ppl() -> float | None:
        if not compute_ppl:
            return None
        n = totals.nll_tokens + nll_tok
        return math.exp((totals.nll + float(nll_dev.item())) / n) if n else None

    done = start_done
    interrupted = False
    try:
        with torch.inference_mode():
            while done < n_chunk:
                stop_at = _boundary_after(done, totals.prior_chunks, [args.output_frequency, args.save_frequency],
                                          n_chunk)
                round_end = min(done + per_step * dist.world, stop_at, n_chunk)
                mine = np.array_split(np.arange(done, round_end), dist.world)[dist.rank]
                if len(mine):
                    batch = torch.from_numpy(chunks.batch(int(mine[0]), int(mine[-1]) + 1)).to(input_device)
                    out_obj = model(input_ids=batch, use_cache=False, **keep_kw)
                    collector.end_step()
                    if compute_ppl:
                        logits = out_obj.logits[:, -(ctx - first):, :]
                        targets = batch[:, first + 1:]
                        for j in range(logits.shape[0]):
                            lg = logits[j, :-1, :].float()
                            nll_dev += torch.nn.functional.cross_entropy(
                                lg, targets[j].to(lg.device), reduction="sum").double().to(nll_dev.device)
                        nll_tok += targets.numel()
                    del out_obj
                n_round = round_end - done
                done = round_end
                totals.chunks_done = done
                total_count = totals.prior_chunks + done
                want_ckpt = total_count % args.output_frequency == 0 or done == n_chunk
                want_snap = args.save_frequency > 0 and total_count % args.save_frequency == 0
                stopping = D.any_flag(dist, stop["flag"], device)
                if want_ckpt or want_snap or stopping:
                    checkpoint(want_snap)
                progress.update(done, n_round * ctx, running_ppl() if dist.is_main else None,
                                final=done == n_chunk)
                if stopping and done < n_chunk:
                    interrupted = True
                    break
    except KeyboardInterrupt:
        if dist.is_main:
            sys.stderr.write(f"\nimatui collect: stopped; {out} holds the last checkpoint\n")
        D.shutdown(dist)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        collector.remove()

    if dist.is_main:
        ppl = (f"; perplexity {math.exp(totals.nll / totals.nll_tokens):.4f} over {int(totals.nll_tokens)} "
               f"tokens" if compute_ppl and totals.nll_tokens else "")
        if interrupted:
            _note(f"interrupted after {done} of {n_chunk} chunks; checkpoint written to {out} "
                  f"(continue with --resume){ppl}")
        else:
            _note(f"wrote {out}: {totals.prior_chunks + done} chunks, "
                  f"{len([c for c in totals.counts.values() if c.any()])} tensors{ppl}")
    D.shutdown(dist, sync=True)
    return EXIT_INTERRUPTED if interrupted else 0
