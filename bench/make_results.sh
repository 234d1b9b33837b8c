#!/usr/bin/env bash
# Regenerate bench/RESULTS.md: the full `kernprop bench` report of one commit.
#
#   bench/make_results.sh [OUT.md [extra kernprop bench options, e.g. --quick, --threads 1]]
#
# NOTE="..." in the environment adds a line to the report's header.
# Measures a clean checkout of HEAD (a temporary git worktree with the Cython extensions
# built in place, imported through PYTHONPATH), so that uncommitted edits in the working
# tree are not what gets measured.  Runs the report twice, each run under the machine-wide
# benchmark lock (flock /tmp/kernprop-bench.lock) so that no two benchmarks share the
# cores.  The report takes each benchmark from the run with the lower median (other work
# on the machine only ever slows a run down: `kernprop bench --merge`), and the comparison
# of the two runs (how many medians agree within 10% / 25% / 2x) is appended as a
# repeatability check.  The default (2-thread) report ends with issue 7's training-step
# table (bench/train_step.py --issue7), also run twice.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
invocation="bench/make_results.sh${*:+ $*}"
out="$(realpath -m "${1:-$repo/bench/RESULTS.md}")"
shift || true
mkdir -p "$(dirname "$out")"
lock=/tmp/kernprop-bench.lock
python="${PYTHON:-python}"

commit="$(git -C "$repo" rev-parse HEAD)"
tmp="$(mktemp -d)"
work="$tmp/kernprop-${commit:0:12}"
git -C "$repo" worktree add --quiet --detach "$work" "$commit"
cleanup() { git -C "$repo" worktree remove --force "$work" || true; rm -rf "$tmp"; }
trap cleanup EXIT

cd "$work"
echo "== building the Cython extensions of $commit in $work" >&2
"$python" setup.py -q build_ext --inplace >/dev/null
export PYTHONPATH="$work"
"$python" - "$work" <<'EOF'
import sys, kernprop
assert kernprop.__file__.startswith(sys.argv[1]), f"imported {kernprop.__file__}, not the worktree"
EOF

note="Made by \`${NOTE:+NOTE=... }$invocation\`: a clean worktree of the commit below, each run under \`flock $lock\` (no other benchmark on the cores; other work may be), run twice; the tables take each benchmark from the run with the lower median, and the two runs are compared at the end.${NOTE:+ $NOTE}"
for run in 1 2; do
    echo "== run $run of 2 ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg))" >&2
    extra=()
    if [ "$run" = 1 ]; then
        extra=(--no-startup --no-memory)  # measured once, in run 2
    fi
    flock "$lock" "$python" -m kernprop.cli bench --json "$tmp/run$run.json" -o "$tmp/run$run.md" \
        --note "$note" "${extra[@]}" "$@"
done

plot=()
if "$python" -c "import matplotlib" 2>/dev/null; then
    plot=(--plot "${out%.md}.png")
fi
"$python" -m kernprop.cli bench --merge "$tmp/run1.json" "$tmp/run2.json" --json "${out%.md}.json" \
    -o "$tmp/merged.md" "${plot[@]}"
{
    cat "$tmp/merged.md"
    echo
    echo "## Repeatability: run 1 against run 2"
    echo
    echo "The same command run twice in a row; ratio = median in run 2 / median in run 1."
    echo
    "$python" -m kernprop.cli bench --compare "$tmp/run1.json" "$tmp/run2.json" | sed -n '/benchmarks in both/,$p'
    echo
    echo "<details><summary>Every benchmark, run 1 against run 2</summary>"
    echo
    "$python" -m kernprop.cli bench --compare "$tmp/run1.json" "$tmp/run2.json" | sed '1,/^$/d'
    echo
    echo "</details>"
    if [ -z "$*" ]; then  # the default 2-thread report: issue 7's training-step table too
        echo
        echo "## Training step: Trainer.fit against a plain NumPy step and PyTorch eager"
        echo
        echo "\`flock $lock python bench/train_step.py --issue7 --threads 2\` in the same worktree, run twice (every round is a row group; see bench/TRAIN_STEP.md for what each row is)."
        for run in 1 2; do
            echo
            echo '```'
            flock "$lock" "$python" bench/train_step.py --issue7 --threads 2 2>/dev/null
            echo '```'
        done
    fi
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out and ${out%.md}.json" >&2
