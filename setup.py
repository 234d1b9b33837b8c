"""Build the Cython backend: every ``pyx/<name>.pyx`` becomes ``kernprop._cy.<name>``.

The extensions are compiled with ``-O3`` and OpenMP.  When the C compiler cannot build
OpenMP code the extensions are built serial and a message says so; the ``cython``
backend then still works, on one thread (``kernprop info`` reports it).

The GEMM micro-kernels (pyx/gemm/) are one C file per instruction set, each compiled
with its own -m flags and linked into ``kernprop._cy.matmul``, which defines
``KP_HAVE_<ISA>`` for each unit that compiled.  A compiler that lacks a flag (or a
non-x86 machine) just leaves that unit out; the module itself is built for the
baseline and picks a kernel at run time from what the CPU reports.
"""

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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


# (macro, source, flags): the per-instruction-set GEMM units of pyx/gemm/.  The AMX unit
# counts only with the AVX512_BF16 one (its packing lives there; kp_gemm.h checks both).
GEMM_UNITS = [
    ("KP_HAVE_AVX2", "pyx/gemm/avx2.c", ["-mavx2", "-mfma"]),
    ("KP_HAVE_AVX512", "pyx/gemm/avx512.c", ["-mavx512f", "-mfma"]),
    ("KP_HAVE_AVX512_BF16", "pyx/gemm/avx512_bf16.c", ["-mavx512f", "-mavx512bf16", "-mfma"]),
    ("KP_HAVE_AMX_BF16", "pyx/gemm/amx_bf16.c", ["-mamx-tile", "-mamx-bf16"]),
]
GEMM_HEADERS = ["pyx/gemm/kp_gemm.h", "pyx/gemm/simd_tile.h"]
# The C helpers every module includes (kp_common.h, kp_short_rows.h, through
# _common.pxi and _short_rows.pxi): an edit of one rebuilds the extensions.
HEADERS = sorted(str(path.relative_to(HERE)) for path in PYX_DIR.glob("*.h"))


class BuildExt(build_ext):
    """build_ext that first compiles the GEMM units, each with its own flags, and links
    the ones that compiled into kernprop._cy.matmul."""

    def build_extension(self, ext):
        if ext.name == "kernprop._cy.matmul" and platform.machine().lower() in ("x86_64", "amd64"):
            for macro, source, flags in GEMM_UNITS:
                try:
                    objects = self.compiler.compile(
                        [source],
                        output_dir=self.build_temp,
                        # the AMX unit sees the AVX512_BF16 declarations it relies on
                        macros=[(macro, "1")]
                        + ([("KP_HAVE_AVX512_BF16", "1")] if macro == "KP_HAVE_AMX_BF16" else []),
                        include_dirs=["pyx/gemm"],
                        extra_postargs=["-O3", "-fno-math-errno", *flags],
                    )
                except Exception as error:  # a compiler without the flag: leave it out
                    print(f"kernprop: {source} not built ({error}); its kernel is left out",
                          file=sys.stderr)
                    continue
                ext.extra_objects.extend(objects)
                ext.define_macros.append((macro, "1"))
        super().build_extension(ext)


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
                include_dirs=[numpy.get_include(), "pyx"],
                depends=HEADERS + ([source for _, source, _ in GEMM_UNITS] + GEMM_HEADERS
                                   if pyx.stem == "matmul" else []),
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


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
