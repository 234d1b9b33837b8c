"""``kernprop bench``'s report: run the pytest-benchmark suites in ``bench/`` and write a
Markdown report.  It lives in the source checkout beside the suites it runs, not in the
installed package; ``kernprop bench`` (``kernprop/cli.py``) finds it next to the package
of an editable install and hands it its arguments (``command.main``).

The report holds, for every op and shape, the median time per backend, the speed-up over
the NumPy reference and over PyTorch, GFLOP/s for the compute-bound ops (GEMM, linear,
linear cross-entropy, training step) and GB/s for the memory-bound ones, next to this
machine's peaks measured in the same run (a large ``np.copyto`` for bandwidth, an
OpenBLAS float32 GEMM for GFLOP/s); the machine, thread counts and library versions;
Numba's first-call compile time and cached start-up per backend (fresh subprocesses);
and the peak memory of the fused linear cross-entropy against the unfused ops.

A row timed while other processes took the cores (the busy rule, ``parsing.SPREAD``) is
unreliable: marked in the tables and the plot, never counted in the headline.

One module per part:

==================  =====================================================================
``parsing.py``      pytest-benchmark JSON -> ``Record`` s; tables, ratios, ``merge``
``rendering.py``    the Markdown report (``render``)
``comparing.py``    two saved runs side by side (``compare``)
``plotting.py``     a PNG of speed-ups (``plot``, needs matplotlib): bars from 1×, the
                    machine, threads and commit, a "BUSY: unreliable" stamp
``machine.py``      the cores other processes use (``/proc/stat``): the busy rule's input
``running.py``      the measuring: ``pytest bench/`` in a subprocess, peaks, start-up,
                    memory; ``run`` composes them
``command.py``      the options and ``main`` of ``kernprop bench``
==================  =====================================================================

Everything except ``running`` only reads JSON, so the report, ``--compare`` and
``--plot`` are tested without benchmarking (``tests/test_benchreport.py``).
"""

from .command import build_parser, main
from .comparing import compare
from .parsing import (BACKEND_ORDER, FAMILIES, OP_ORDER, OTHERS_MARGIN, SPREAD, BenchError, Record, _family_of,
                      busy_reason, busy_rows, load, load_busy, merge, records, speedup, table)
from .plotting import BUSY_STAMP, figure, plot, plot_info, plot_text
from .rendering import busy_note, family_tables, headline, render
from .running import THREAD_VARIABLES, find_bench_dir, run, set_thread_env

__all__ = ["BACKEND_ORDER", "BUSY_STAMP", "FAMILIES", "OP_ORDER", "OTHERS_MARGIN", "SPREAD", "BenchError", "Record",
           "THREAD_VARIABLES", "build_parser", "busy_note", "busy_reason", "busy_rows", "compare", "family_tables",
           "figure", "find_bench_dir", "headline", "load", "load_busy", "main", "merge", "plot", "plot_info",
           "plot_text", "records", "render", "run", "set_thread_env", "speedup", "table"]
