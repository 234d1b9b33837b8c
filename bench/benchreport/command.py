"""``kernprop bench``'s options and ``main`` (``kernprop.cli`` hands its arguments here when
it runs from a source checkout)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .parsing import BenchError, LOCK_HINT, load, merge, records
from .rendering import render, terminal_summary
from .comparing import compare
from .plotting import plot, plot_info
from .running import run, set_thread_env


def main(argv=None) -> int:
    """``kernprop bench [options]``: ``argv`` the words after ``bench``."""
    words = list(argv if argv is not None else sys.argv[1:])
    args = build_parser().parse_args(words)
    try:
        if args.compare:
            a, b = args.compare
            text = compare(load(a), load(b), a, b)
            _emit(text, args.output)
            return 0
        if args.merge:
            data = merge([load(path) for path in args.merge], args.merge)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(data, f, indent=1)
        elif args.from_json:
            data = load(args.from_json)
        else:
            if args.threads:
                set_thread_env(args.threads)
            if "--note" in words[:-1]:  # the note is printed in the report already
                i = words.index("--note")
                del words[i:i + 2]
            command = shlex.join(["kernprop", "bench", *words])
            data = run(quick=args.quick, ops=_split(args.ops), backends=_split(args.backends),
                       json_path=args.json, max_time=args.max_time, startup=not args.no_startup,
                       memory=not args.no_memory, command=command, note=args.note,
                       log=lambda m: print(m, file=sys.stderr, flush=True), wait_s=args.wait, retries=args.retries,
                       pytest_log=None if args.verbose else _pytest_log(args))
        _emit_report(data, args.output)
        if args.plot:
            print(plot(records(data), args.plot, info=plot_info(data)), file=sys.stderr)
    except BenchError as exc:
        print(f"kernprop bench: {exc}", file=sys.stderr)
        return 2
    return 1 if (data.get("kernprop_report") or {}).get("failures") else 0



def _split(values):
    """["a,b", "c"] -> ["a", "b", "c"]; None -> None."""
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]



# Where the full report goes when kernprop bench runs on a terminal without --output.
DEFAULT_REPORT = "kernprop-bench-report.md"



def _pytest_log(args):
    """The file for pytest's output: beside the JSON or the report when one is named,
    else a fresh file in the temporary directory (it outlives the run, for reading)."""
    import tempfile

    for path in (args.json, args.output):
        if path:
            return str(Path(path).with_suffix(".pytest.log"))
    handle, path = tempfile.mkstemp(prefix="kernprop-bench-", suffix=".pytest.log")
    os.close(handle)
    return path



def _emit_report(data, output):
    """The Markdown report to ``output``, and the one-screen summary with its path on
    stdout; piped without ``output``, the whole report goes to stdout as before (so
    ``kernprop bench > report.md`` keeps working)."""
    text = render(data)
    if output is None and not sys.stdout.isatty():
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    path = Path(output or DEFAULT_REPORT)
    path.write_text(text)
    sys.stdout.write(terminal_summary(data, path.resolve()))



def _emit(text, output):
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")



def build_parser():
    """The options of ``kernprop bench``."""
    bench = argparse.ArgumentParser(
        prog="kernprop bench",
        description="Run the pytest-benchmark suites in bench/ (a source checkout) and write a Markdown "
                    f"report. Time on a quiet machine; on a shared one wrap it in `{LOCK_HINT}`.",
    )
    bench.add_argument("--quick", action="store_true", help="small and MLP-sized shapes only (a few minutes)")
    bench.add_argument("--ops", action="append", default=None,
                       help="only these ops, comma-separated or repeated (e.g. matmul,relu,train_step)")
    bench.add_argument("--backends", action="append", default=None,
                       help="only these backends, comma-separated or repeated (numpy,numba,cython,cuda,torch)")
    bench.add_argument("--json", metavar="PATH", default=None,
                       help="keep the pytest-benchmark JSON (with the extra measurements) here")
    bench.add_argument("--output", "-o", metavar="PATH", default=None,
                       help="write the full Markdown report here and print a one-screen summary (default: "
                            f"on a terminal ./{DEFAULT_REPORT}, else the whole report on standard output)")
    bench.add_argument("--verbose", "-v", action="store_true",
                       help="show pytest's output and pytest-benchmark's own tables (default: a log file)")
    bench.add_argument("--plot", metavar="PATH", default=None,
                       help="also write a PNG bar chart of speed-ups over numpy (needs matplotlib)")
    bench.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), default=None,
                       help="compare two saved runs: per-benchmark ratio of medians B/A (runs nothing)")
    bench.add_argument("--from-json", metavar="PATH", default=None,
                       help="write the report of a saved run instead of running the benchmarks")
    bench.add_argument("--merge", nargs="+", metavar="RUN.json", default=None,
                       help="write the report of saved runs of one command, each benchmark from the run "
                            "with the lowest median (other processes only ever slow a run down); the "
                            "extra measurements come from the last run; --json saves the merged run")
    bench.add_argument("--max-time", type=float, default=None,
                       help="seconds of timing per benchmark (default 0.3, --quick 0.1)")
    bench.add_argument("--threads", type=int, default=None,
                       help="threads for every backend, numpy's BLAS and torch included (default: Numba's, "
                            "the number of cores); 1 is the robust choice on a machine others are using")
    bench.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                       help="on a busy machine (other processes on the cores the threads need), wait up to "
                            "this long for it to go quiet before the benchmarks and before a retry (default 60)")
    bench.add_argument("--retries", type=int, default=1,
                       help="time the rows a busy machine made unreliable again, up to this many times "
                            "(default 1); rows still unreliable are marked and left out of the headline")
    bench.add_argument("--no-startup", action="store_true", help="skip the compile / cache start-up measurement")
    bench.add_argument("--no-memory", action="store_true", help="skip the linear cross-entropy memory measurement")
    bench.add_argument("--note", default=None, help="a line to put under the report's title")
    return bench
