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

SUBCOMMANDS = ("stats", "convert", "merge", "diff", "screenshot", "serve", "collect", "demo")
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
    from imatui.formats import load

    a = load(args.a, chunk_size=args.chunk_size)
    b = load(args.b, chunk_size=args.chunk_size)
    if args.format is None:
        from imatui.tui.app import make_app

        make_app([args.a], diff_with=args.b).run()
        return 0
    from imatui.diff_printers import format_diff
    from imatui.stats.diff import compute_diff
    from imatui.stats.experts import diff_experts

    experts = diff_experts(a, b) if args.format != "csv" else None
    sys.stdout.write(format_diff(compute_diff(a, b, fork=True), args.format, sort=args.sort, experts=experts))
    return 0


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
             "collect": _collect_parser}[cmd](sub)
            if cmd == "collect":
                return _run_collect(argparse.Namespace(rest=argv[1:]))
            args = parser.parse_args(argv)
            return {"stats": _run_stats, "convert": _run_convert, "merge": _run_merge,
                    "diff": _run_diff, "screenshot": _run_screenshot, "serve": _run_serve}[cmd](args)
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
