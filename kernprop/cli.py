"""The ``kernprop`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _info(args) -> int:
    import numpy

    import kernprop
    from kernprop.backends import backends, get_backend, get_num_threads

    print(f"kernprop {kernprop.__version__} (Python {sys.version.split()[0]}, NumPy {numpy.__version__})")
    try:
        import numba

        from numba.core.config import CACHE_DIR

        cache = CACHE_DIR or "beside each module, in __pycache__"
        print(f"numba {numba.__version__}; cache: {cache}")
    except ImportError:
        print("numba not installed")
    print(f"default backend: {get_backend()}; CPU threads: {get_num_threads()}")
    print("backends:")
    for status in backends().values():
        print(f"  {status}  - {status.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernprop", description="High-performance kernels for training neural networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, backends and why any is unavailable, threads, Numba cache")
    info.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
