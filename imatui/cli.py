"""Command line: `imatui [PATH ...]` opens the explorer; subcommands print, convert, merge, collect.

Every ImatrixError becomes one line on stderr and exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from imatui.errors import ImatrixError

SUBCOMMANDS = ("stats", "convert", "merge", "diff", "screenshot", "serve", "collect", "demo", "plan", "check")
EXIT_BAD_INPUT = 2


def demo_path() -> Path:
    """The bundled SmolLM2-135M imatrix (written by llama-imatrix on 40 chunks of prose)."""
    return Path(str(resources.files("imatui") / "data" / "demo.imatrix.gguf"))


def _fail(message: str) -> int:
    print(f"imatui: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line (its default prints usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"imatui: {message} (see imatui {self.prog.split()[-1]} --help)"
              if " " in self.prog else f"imatui: {message} (see imatui --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _stats_parser(sub: argparse._SubParsersAction) -> None:
    from imatui.printers import SORT_KEYS

    p = sub.add_parser("stats", help="print every statistic per tensor (and per layer)",
                       description="Per-tensor statistics as llama-imatrix --show-statistics prints them, "
                                   "plus skewness, kurtosis, dead and top channels, MoE expert counts.")
    p.add_argument("file", nargs="?", help="imatrix file (.gguf or legacy .dat, detected by content)")
    p.add_argument("--demo", action="store_true", help="use the bundled demo imatrix")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), help="sort tensors by this column")
    p.add_argument("--reverse", action="store_true", help="reverse the sort order")
    p.add_argument("--layers", action="store_true",
                   help="per-layer aggregates only (table, csv); json always has both")
    p.add_argument("--chunk-size", type=int, default=512,
                   help="chunk size for legacy .dat files, which do not store it (default 512)")
    p.add_argument("--rare", default="10%", metavar="THRESHOLD",
                   help="MoE: an expert is rare below this: a percentage of its layer's mean tokens per "
                        "expert (default 10%%) or a token count (e.g. 100)")
    p.add_argument("--experts", metavar="TENSOR",
                   help="MoE: one row per expert of this tensor instead of the tensor table")
    p.add_argument("--expert-sort", default="expert", metavar="COLUMN",
                   help="sort --experts rows: expert, tokens, share, sum, max, mean, std, entropy, zd, ...")


def _run_experts(args: argparse.Namespace, path: str | Path, threshold: object) -> int:
    from imatui.formats import load
    from imatui.printers import format_expert_csv, format_expert_table
    from imatui.stats.experts import expert_table, sort_experts

    im = load(path, chunk_size=args.chunk_size)
    entry = im.entries.get(args.experts)
    if entry is None:
        return _fail(f"{path}: no tensor named {args.experts!r}")
    if entry.n_mat < 2:
        return _fail(f"{args.experts} is not an expert tensor (it has one matrix)")
    rows = sort_experts(expert_table(entry, threshold, str(path)), args.expert_sort)
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps({"tensor": args.experts, "experts": [r.to_dict() for r in rows]},
                                    indent=1) + "\n")
    elif args.format == "csv":
        sys.stdout.write(format_expert_csv(rows))
    else:
        sys.stdout.write(format_expert_table(args.experts, rows))
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    from imatui.formats import load
    from imatui.printers import format_csv, format_json, format_layers_csv, format_table
    from imatui.stats import compute_stats

    from imatui.stats.experts import RareThreshold, coverage

    path = demo_path() if args.demo else args.file
    if path is None:
        return _fail("stats needs a FILE (or --demo)")
    threshold = RareThreshold.parse(args.rare)
    if args.experts:
        return _run_experts(args, path, threshold)
    imatrix = load(path, chunk_size=args.chunk_size)
    report = compute_stats(imatrix, fork=True)
    cov = coverage(imatrix, threshold)
    if args.format == "json":
        text = format_json(report, sort=args.sort, reverse=args.reverse, coverage=cov)
    elif args.format == "csv":
        text = format_layers_csv(report) if args.layers else format_csv(report, sort=args.sort,
                                                                         reverse=args.reverse)
    elif args.layers:
        text = format_table(report, sort=args.sort, reverse=args.reverse, layers=True, coverage=cov)
        text = text[text.index("\nComputing weighted"):]
    else:
        text = format_table(report, sort=args.sort, reverse=args.reverse, coverage=cov)
    sys.stdout.write(text)
    return 0


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between GGUF and the legacy .dat format",
                       description="Convert an imatrix between GGUF and legacy .dat, as "
                                   "llama-imatrix --output-format does; no model needed.")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", choices=("gguf", "dat"),
                   help="output format (default: dat for a .dat name, gguf otherwise)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size of a legacy input (default 512)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def _run_convert(args: argparse.Namespace) -> int:
    from imatui.formats import load, save

    im = load(args.file, chunk_size=args.chunk_size)
    _same_file_guard([args.file], args.output)
    out = save(im, args.output, format=args.format, force=args.force)
    print(f"wrote {out} ({len(im)} tensors, {im.chunk_count} chunks)", file=sys.stderr)
    return 0


def _merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="combine imatrix files (sums and counts add)",
                       description="Combine imatrix files as llama-imatrix --in-file A --in-file B does: "
                                   "sums and counts add, datasets concatenate; no model needed.")
    p.add_argument("files", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", choices=("gguf", "dat"))
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size of legacy inputs (default 512)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def _run_merge(args: argparse.Namespace) -> int:
    from imatui.formats import load, save
    from imatui.ops import merge

    if len(args.files) < 2:
        return _fail("merge needs at least two files")
    _same_file_guard(args.files, args.output)
    merged = merge([load(f, chunk_size=args.chunk_size) for f in args.files])
    out = save(merged, args.output, format=args.format, force=args.force)
    print(f"wrote {out} ({len(merged)} tensors, {merged.chunk_count} chunks, "
          f"{len(merged.datasets)} datasets)", file=sys.stderr)
    return 0


def _same_file_guard(inputs: list[str], output: str) -> None:
    out = Path(output)
    for f in inputs:
        if out.exists() and Path(f).exists() and os.path.samefile(f, out):
            raise ImatrixError(f"output {output} is also an input; write to another name")


def _diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two imatrix files",
                       description="Compare two imatrix files tensor by tensor: opens the diff view, or "
                                   "prints it with --format.")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=("table", "json", "csv"),
                   help="print instead of opening the app")
    p.add_argument("--sort", default=None, help="sort rows by this column")
    p.add_argument("--chunk-size", type=int, default=512)


def _run_diff(args: argparse.Namespace) -> int:
    from imatui.errors import FormatError
    from imatui.formats import load_pair
    from imatui.formats.detect import is_gguf_model
    from imatui.stats.diff import load_compiled_loops, worth_compiling

    printed = args.format is not None
    try:  # a big diff (4 bytes a value in each file) takes numba's compiled loops: started meanwhile
        big = worth_compiling(min(os.path.getsize(args.a), os.path.getsize(args.b)) // 4)
    except OSError:
        big = False  # load_pair says why
    try:  # the two headers parsed side by side when the diff is printed (the app has threads)
        a, b = load_pair(args.a, args.b, chunk_size=args.chunk_size, fork=printed,
                         meanwhile=load_compiled_loops if printed and big and not is_gguf_model(args.a) else None)
    except FormatError as exc:
        if "GGUF model" not in str(exc):
            raise
        return _run_model_diff(args)
    if args.format is None:
        from imatui.tui.app import make_app

        make_app([args.a], diff_with=args.b).run()
        return 0
    from imatui.diff_printers import format_diff
    from imatui.stats.diff import compute_diff
    from imatui.stats.experts import diff_experts

    report = compute_diff(a, b, fork=True)
    experts = diff_experts(a, b, expert_cos=report.expert_cos) if args.format != "csv" else None
    sys.stdout.write(format_diff(report, args.format, sort=args.sort, experts=experts))
    return 0


def _run_model_diff(args: argparse.Namespace) -> int:
    """`imatui diff A.gguf B.gguf` of two models: where their tensor types differ."""
    from imatui.plan.model import read_model
    from imatui.plan.recipe import type_diff
    from imatui.plan_printers import format_model_diff

    a, b = read_model(args.a), read_model(args.b)
    sys.stdout.write(format_model_diff(args.a, args.b, type_diff(a, b), len(a.tensors), len(b.tensors)))
    return 0


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose a quantization type per tensor under a size budget",
                       description="Measure each weight's imatrix-weighted error for a ladder of types "
                                   "(with llama-quantize probes, or gguf-py estimates without it), choose one "
                                   "type per weight for the least total error within the budget, and write "
                                   "the recipe for llama-quantize --tensor-type-file. With --from, write the "
                                   "recipe a quantized GGUF was made with.")
    p.add_argument("model", nargs="?", help="the F32/F16/BF16 GGUF that llama-quantize will read")
    p.add_argument("--imatrix", help="the imatrix llama-quantize will use (.gguf or legacy .dat)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--size", help="file size budget: bytes, or 80M, 1.5G (powers of 1000), 2GiB")
    budget.add_argument("--bpw", type=float, help="bits per weight, as llama-quantize counts them")
    budget.add_argument("--like", metavar="MIX", help="the size of llama-quantize's own mix (Q3_K_M, Q4_K_S...) "
                                                      "of this model; needs llama-quantize")
    p.add_argument("-o", "--output", help="recipe file to write (NAME=TYPE lines)")
    p.add_argument("--from", dest="from_", metavar="QUANT.gguf",
                   help="read the recipe of a quantized GGUF instead of planning")
    p.add_argument("--llama-quantize", metavar="PATH", help="llama-quantize to probe with (default: on PATH)")
    p.add_argument("--custom-q", metavar="FILE", help="also write the recipe as ik_llama.cpp --custom-q rules")
    p.add_argument("--types", help="comma-separated ladder to probe (default: K, IQ and 32-block types)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="values per tensor to measure on (default 2097152; larger tensors are sampled by rows)")
    p.add_argument("--head-weight", type=float, metavar="W",
                   help="factor on the error of the weight that makes the logits (output.weight, or token_embd "
                        "when tied; default: the number of blocks)")
    p.add_argument("--cache-dir", help="where probe errors are cached (default: .imatui-plan next to the recipe)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size of a legacy .dat imatrix")
    p.add_argument("--force", action="store_true", help="replace the recipe files if they exist")
    p.add_argument("--view", action="store_true",
                   help="open the plan screen: the budget from the keyboard (+ - [ ]), w writes the recipe")


def _check_writable(path: str | None, force: bool) -> None:
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ImatrixError(f"{path}: is a directory")
    if out.exists() and not force:
        raise ImatrixError(f"{path}: already exists (use --force to replace it)")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise ImatrixError(f"{path}: folder {out.parent} does not exist")


def _run_plan(args: argparse.Namespace) -> int:
    from imatui.plan.model import read_model
    from imatui.plan.recipe import imatrix_keys, recipe_of, tensor_type_lines, write_text_atomic
    from imatui.plan_printers import format_from

    if args.from_:
        if args.model or args.imatrix or args.size or args.bpw or args.like:
            return _fail("plan --from QUANT.gguf reads a recipe: give no model, imatrix or budget with it")
        _check_writable(args.output, args.force)
        quant = read_model(args.from_)
        types = recipe_of(quant)
        if args.output:
            weights = list(types)
            write_text_atomic(args.output, "\n".join(tensor_type_lines(types, weights)) + "\n", force=args.force)
        sys.stdout.write(format_from(args.from_, types, imatrix_keys(quant),
                                     quant.metadata.get("general.file_type"), args.output))
        return 0
    if not args.model:
        return _fail("plan needs MODEL.gguf (the F32/F16/BF16 GGUF) or --from QUANT.gguf")
    if not args.imatrix:
        return _fail("plan needs --imatrix IMATRIX (the file llama-quantize will use)")
    if args.view:
        if args.size or args.like:
            return _fail("plan --view takes its budget as --bpw (then + - [ ] change it)")
        if not args.output:
            return _fail("plan --view needs -o RECIPE (the file w writes)")
        from imatui.tui.screens.plan import PlanApp, PlanScreen

        screen = PlanScreen(args.model, args.imatrix, recipe_path=args.output, bpw=args.bpw or 4.5,
                            llama_quantize=args.llama_quantize, chunk_size=args.chunk_size)
        PlanApp(screen).run()
        return 0
    if not (args.size or args.bpw is not None or args.like):
        return _fail("plan needs a budget: --size 80M, --bpw 3.5 or --like Q3_K_M")
    if not args.output:
        return _fail("plan needs -o RECIPE (the file for llama-quantize --tensor-type-file)")
    _check_writable(args.output, args.force)
    _check_writable(args.custom_q, args.force)
    return _plan_with(args)


def _plan_with(args: argparse.Namespace) -> int:
    from imatui.formats import load
    from imatui.plan.measure import SAMPLE_VALUES
    from imatui.plan.planner import check_budget, make_plan, parse_size, validate
    from imatui.plan.probe import find_llama_quantize, measure, mix_of
    from imatui.plan.qtypes import DEFAULT_LADDER, GGUF_PY_QUANTIZES, MIXES, PROBE_FTYPE
    from imatui.plan.model import read_source_model
    from imatui.plan.recipe import custom_q_rules, dominant_ftype, tensor_type_lines, write_text_atomic
    from imatui.plan_printers import format_plan

    size = parse_size(args.size) if args.size else None
    if size is not None and size <= 0:
        return _fail("--size must be above 0")
    if args.bpw is not None and not 0 < args.bpw <= 32:
        return _fail("--bpw must be between 0 and 32")
    like = args.like.upper() if args.like else None
    if like and like not in MIXES:
        return _fail(f"--like {args.like}: not a llama-quantize mix (one of {', '.join(MIXES)})")
    types = DEFAULT_LADDER
    if args.types:
        types = tuple(t.strip().upper() for t in args.types.split(",") if t.strip())
        bad = [t for t in types if t not in PROBE_FTYPE]
        if bad:
            return _fail(f"--types: {', '.join(bad)} cannot be probed (use {', '.join(PROBE_FTYPE)})")
    sample = args.sample or SAMPLE_VALUES
    if args.head_weight is not None and not args.head_weight > 0:
        return _fail("--head-weight must be above 0")
    if sample < 256:
        return _fail("--sample must be at least 256 values")

    model = read_source_model(args.model)
    imatrix = load(args.imatrix, chunk_size=args.chunk_size)
    validate(model, imatrix)
    exe = find_llama_quantize(args.llama_quantize)
    if like and exe is None:
        return _fail("--like needs llama-quantize to make that mix (put it on PATH or give "
                     "--llama-quantize PATH), or give --size/--bpw")
    if exe is None:
        types = tuple(t for t in types if t in GGUF_PY_QUANTIZES)
    out = Path(args.output)
    cache_dir = Path(args.cache_dir) if args.cache_dir else (out.parent if str(out.parent) else Path(".")) / ".imatui-plan"
    imatrix_path = Path(args.imatrix)
    budget_text = f"--size {args.size}" if args.size else f"--bpw {args.bpw}" if args.bpw is not None else f"--like {like}"
    check_budget(model, imatrix, imatrix_path, types, size=size, bpw=args.bpw, budget_text=budget_text,
                 estimates=exe is None)
    interactive = sys.stderr.isatty()
    if exe is None and interactive:
        print("imatui: no llama-quantize (on PATH or --llama-quantize): the errors are ESTIMATES from gguf-py's "
              "reference quantizers, for " + ", ".join(types) + " and F16 only", file=sys.stderr)

    def progress(msg: str) -> None:
        if interactive:
            print(f"imatui: {msg}", file=sys.stderr)

    table, cache_path = measure(model, imatrix, imatrix_path, cache_dir, exe=exe, types=types,
                                sample_values=sample, progress=progress)
    like_info = None
    if like:
        like_info = dict(mix_of(exe, model, imatrix_path, like, cache_dir, table, cache_path), name=like)
    plan = make_plan(model, imatrix, imatrix_path, table, size=size, bpw=args.bpw, like=like_info,
                     budget_text=budget_text, head_weight=args.head_weight)
    chosen = plan.types()
    weights = list(chosen)
    write_text_atomic(out, "\n".join(tensor_type_lines(chosen, weights)) + "\n", force=args.force)
    if args.custom_q:
        write_text_atomic(args.custom_q, ",".join(custom_q_rules(chosen)) + "\n", force=args.force)
    target = str(Path(args.model).with_name(Path(args.model).stem + "-imatui.gguf"))
    command = [str(exe) if exe else "llama-quantize", "--imatrix", args.imatrix, "--tensor-type-file",
               args.output, args.model, target, dominant_ftype(chosen, model)]
    sys.stdout.write(format_plan(plan, command=command, recipe_path=args.output, cache_path=str(cache_path)))
    if args.custom_q:
        sys.stdout.write(f"ik_llama.cpp: llama-quantize --imatrix {args.imatrix} --custom-q \"$(cat {args.custom_q})\" "
                         f"{args.model} {target} {dominant_ftype(chosen, model)}\n")
    return 0


def _check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="what llama-quantize would complain about, before quantizing",
                       description="Match an imatrix against the model it will quantize: weights without an "
                                   "entry, names that never match, size mismatches, experts with no data, the "
                                   "chunk size, and the types that would refuse to run. Exit status 1 when "
                                   "llama-quantize would abort.")
    p.add_argument("model", help="the model GGUF llama-quantize will read")
    p.add_argument("imatrix", help="the imatrix (.gguf or legacy .dat)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size of a legacy .dat imatrix")


def _run_check(args: argparse.Namespace) -> int:
    from imatui.formats import load
    from imatui.plan.check import check
    from imatui.plan.model import read_model
    from imatui.plan_printers import format_check

    model = read_model(args.model)
    imatrix = load(args.imatrix, chunk_size=args.chunk_size)
    report = check(model, imatrix)
    sys.stdout.write(format_check(report))
    return 1 if report.errors else 0


def _screenshot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("screenshot", help="render the app headless to an SVG and exit")
    p.add_argument("file", nargs="?", help="imatrix file (default: the demo)")
    p.add_argument("-o", "--output", required=True, help="SVG file to write")
    p.add_argument("--size", default="120x40", help="terminal size COLSxROWS (default 120x40)")
    p.add_argument("--view", choices=("table", "layers", "detail", "diff", "experts"), default="table")
    p.add_argument("--diff-with", help="second file for --view diff")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def _run_screenshot(args: argparse.Namespace) -> int:
    from imatui.tui.headless import render_screenshot

    try:
        cols, rows = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        return _fail(f"--size must look like 120x40, not {args.size!r}")
    if cols < 20 or rows < 8:
        return _fail("--size is too small (at least 20x8)")
    out = Path(args.output)
    if out.exists() and not args.force:
        return _fail(f"{out}: already exists (use --force to replace it)")
    path = args.file or str(demo_path())
    render_screenshot(path, out, size=(cols, rows), view=args.view, diff_with=args.diff_with)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the explorer in a web browser (no login: localhost by default)",
                       description="Serve the explorer, live following included, to web browsers with "
                                   "textual-serve: each browser tab runs its own app. It listens on "
                                   "127.0.0.1 unless --host says otherwise; there is no authentication, "
                                   "so reach it from elsewhere through ssh -L 8000:localhost:8000 HOST.")
    p.add_argument("path", nargs="?", default=".",
                   help="imatrix file or folder (default: the current folder)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 takes a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="on loopback, also answer requests for this host name (a reverse proxy's)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size for legacy .dat files")


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from imatui.serve import serve
    except ImportError as exc:
        return _fail(f"serve needs textual-serve (pip install textual-serve): {exc}")
    return serve(args.path, host=args.host, port=args.port, chunk_size=args.chunk_size,
                 allowed_hosts=tuple(args.allow_host))


def _collect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect an imatrix from a transformers model (needs torch)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _run_collect(args: argparse.Namespace) -> int:
    try:
        from imatui.collect.run import main as collect_main
    except ImportError as exc:
        return _fail(f"collect needs the 'collect' extra (pip install 'imatui[collect]'): {exc}")
    return collect_main(args.rest)


def _app_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imatui", description="A terminal explorer for llama.cpp imatrix files.",
                epilog="subcommands: " + ", ".join(SUBCOMMANDS) + " (imatui SUBCOMMAND --help)")
    p.add_argument("paths", nargs="*", help="imatrix file(s) or a folder (default: the current folder); "
                                             "several snapshots of one run show their convergence")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size for legacy .dat files")
    p.add_argument("--version", action="version", version=f"imatui {__import__('imatui').__version__}")
    return p


def _run_app(paths: list[str], chunk_size: int = 512) -> int:
    from imatui.tui.app import make_app

    make_app(paths or ["."], chunk_size=chunk_size).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            cmd = argv[0]
            if cmd == "demo":
                return _run_app([str(demo_path())])
            parser = _Parser(prog="imatui")
            sub = parser.add_subparsers(dest="cmd", parser_class=_Parser)
            {"stats": _stats_parser, "convert": _convert_parser, "merge": _merge_parser,
             "diff": _diff_parser, "screenshot": _screenshot_parser, "serve": _serve_parser,
             "collect": _collect_parser, "plan": _plan_parser, "check": _check_parser}[cmd](sub)
            if cmd == "collect":
                return _run_collect(argparse.Namespace(rest=argv[1:]))
            args = parser.parse_args(argv)
            return {"stats": _run_stats, "convert": _run_convert, "merge": _run_merge,
                    "diff": _run_diff, "screenshot": _run_screenshot, "serve": _run_serve, "plan": _run_plan,
                    "check": _run_check}[cmd](args)
        args = _app_parser().parse_args(argv)
        return _run_app(args.paths, args.chunk_size)
    except ImatrixError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # `imatui stats FILE | head` closes the pipe early: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
