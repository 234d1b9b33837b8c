"""Build the Cython backend: every ``pyx/<name>.pyx`` becomes ``kernprop._cy.<name>``.

The extensions are compiled with ``-O3`` and OpenMP.  When the C compiler cannot build
OpenMP code the extensions are built serial and a message says so; the ``cython``
backend then still works, on one thread (``kernprop info`` reports it).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
PYX_DIR = HERE / "pyx"

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def compiler_supports_openmp() -> bool:
    """Compile and link a tiny OpenMP program with the compiler Python was built with."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        compiler = "cc"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text(OPENMP_PROBE)
        try:
            result = subprocess.run(
                [compiler, "-fopenmp", str(source), "-o", str(Path(tmp) / "probe")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def extensions():
    with_openmp = os.environ.get("KERNPROP_NO_OPENMP") != "1" and compiler_supports_openmp()
    if not with_openmp:
        print(
            "kernprop: the C compiler cannot build OpenMP code (or KERNPROP_NO_OPENMP=1); "
            "the cython backend is built serial (one thread).",
            file=sys.stderr,
        )
    compile_args = ["-O3", "-fno-math-errno"]
    link_args = []
    if with_openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    modules = []
    for pyx in sorted(PYX_DIR.glob("*.pyx")):
        modules.append(
            Extension(
                f"kernprop._cy.{pyx.stem}",
                [str(pyx.relative_to(HERE))],
                include_dirs=[numpy.get_include()],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        modules,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
