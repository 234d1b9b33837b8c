"""kernprop bench on a busy machine (issue 19, benchmark method): the busy rule marks rows,
the headline never counts them, the plot carries the machine, threads, commit and a BUSY
stamp with bars from 1x, and the harness times each contender in a block of its own.
Synthetic JSON and a fake pytest-benchmark fixture: nothing is benchmarked here."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import benchlib  # noqa: E402 - bench/ of this checkout
import benchreport as br  # noqa: E402
from benchreport import machine, running  # noqa: E402


def _bench(op, shape, backend, median, *, minimum=None, others=None, threads=2, label="mlp"):
    info = {"op": op, "shape": shape, "shape_label": label, "backend": backend, "flops": 0, "bytes": 8,
            "threads": threads}
    if others is not None:
        info["others_cores"] = others
    return {"group": f"{op} {shape}", "name": f"test_{op}[{backend}]",
            "fullname": f"bench/test_x.py::test_{op}[{op}-{label}-{shape}-{backend}]",
            "params": {"op": op, "backend": backend}, "extra_info": info,
            "stats": {"median": median, "min": median if minimum is None else minimum, "rounds": 50}}


def _data(benchmarks, cores=2, threads=2, **extra):
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU 9000"},
                             "kernprop": {"threads": threads, "torch_threads": threads, "cpu_count": cores}},
            "commit_info": {"id": "0123456789abcdef"}, "benchmarks": benchmarks,
            "kernprop_report": {"commit": "0123456789abcdef", "dirty": True, "blas_threads": threads, **extra}}


def _cells(text, op):
    line = next(line for line in text.splitlines() if line.startswith(f"| {op} |"))
    return [c.strip() for c in line.strip("|").split("|")]


# --- the busy rule ----------------------------------------------------------------------


def test_spread_of_rounds_marks_a_row():
    assert br.busy_reason(1.6e-3, 1e-3) == "median 1.6× its fastest round"
    assert br.busy_reason(1.4e-3, 1e-3) == ""  # quiet runs stay under 1.3x


@pytest.mark.parametrize("others, threads, busy", [
    (0.3, 2, False),   # a daemon: both threads still have a core
    (0.8, 2, True),    # 2 threads on 2 cores, one of them taken
    (1.2, 1, False),   # 1 thread, one core free
    (1.8, 1, True),    # both cores taken
])
def test_other_processes_cores_mark_a_row(others, threads, busy):
    recs = br.records(_data([_bench("relu", "256x512", "numba", 1e-5, others=others, threads=threads)],
                            threads=threads))
    assert recs[0].unreliable is busy
    if busy:
        assert recs[0].busy == f"other processes used {others:.1f} of 2 cores"


def test_load_average_marks_rows_without_their_own_measurement():
    old = [_bench("relu", "256x512", b, 1e-5) for b in ("numpy", "numba")]
    assert not br.busy_rows(br.records(_data(old, load=[1.0, 3.5])))  # 3.5 - 2 own threads: 1.5 others
    recs = br.records(_data(old, load=[2.6, 3.0]))
    assert [r.busy for r in recs] == ["load average of other processes 2.6 on 2 cores"] * 2
    measured = [_bench("relu", "256x512", b, 1e-5, others=0.1) for b in ("numpy", "numba")]
    assert not br.busy_rows(br.records(_data(measured, load=[2.6, 3.0])))  # the rows' own figures rule


# --- the headline, the report, the terminal ---------------------------------------------


def _busy_run():
    return _data([
        _bench("relu", "256x512", "numpy", 50e-6, others=0.1),
        _bench("relu", "256x512", "numba", 0.12, others=1.9),         # 0.0004x: a busy core
        _bench("relu", "256x512", "cython", 25e-6, others=0.1),
        _bench("softmax", "4096x1000", "numpy", 4.0, label="large", others=0.0),
        _bench("softmax", "4096x1000", "numba", 1.0, label="large", others=0.0),   # 4x
        _bench("softmax", "65536x10", "numpy", 2168.0, label="large", others=0.0, minimum=1.0),  # spread
        _bench("softmax", "65536x10", "numba", 1.0, label="large", others=0.0),
    ])


def test_busy_rows_never_reach_the_headline():
    text = br.headline(br.records(_busy_run()))
    relu = _cells(text, "relu")
    assert relu[1] == "– / busy / –"    # numba vs numpy
    assert relu[2] == "– / 2.00 / –"    # cython vs numpy: both rows reliable
    softmax = _cells(text, "softmax")
    assert softmax[1] == "– / – / 4.00"  # only the reliable large shape, not the 2168x one
    assert "0.0004" not in text and "2168" not in text


def test_report_and_terminal_carry_the_marking():
    data = _busy_run()
    text = br.render(data)
    top = text.split("## Machine")[0]
    assert "**BUSY: unreliable.** 2 of 7 rows" in top
    assert "(min 1 s) ‡" in text
    assert "| relu | 256x512 | numba | other processes used 1.9 of 2 cores |" in text
    assert "| softmax | 65536x10 | numpy | median 2168.0× its fastest round |" in text
    summary = br.rendering.terminal_summary(data)
    assert "BUSY: unreliable. 2 of 7 rows" in summary and "busy" in summary
    assert "BUSY" not in br.render(_data([_bench("relu", "256x512", "numpy", 5e-5, others=0.1)]))


def test_merge_prefers_a_reliable_row_to_a_faster_busy_one():
    busy = _data([_bench("relu", "256x512", "numba", 1e-5, minimum=1e-6)])    # fast median, spread 10x
    quiet = _data([_bench("relu", "256x512", "numba", 2e-5, others=0.1)])
    merged = br.merge([busy, quiet])
    (rec,) = br.records(merged)
    assert rec.median == 2e-5 and not rec.unreliable


def test_run_times_busy_rows_again(tmp_path, monkeypatch):
    calls = []

    def fake_pytest(bench_dir, json_path, quick, ops, backends, max_time, min_rounds=15, log_path=None,
                    targets=None):
        calls.append(targets)
        numba = _bench("relu", "256x512", "numba", 1e-5, others=0.1 if targets else 1.9)
        rows = [numba] if targets else [_bench("relu", "256x512", "numpy", 5e-5, others=0.1), numba]
        Path(json_path).write_text(json.dumps(_data(rows)))
        return 0

    monkeypatch.setattr(running, "run_pytest", fake_pytest)
    monkeypatch.setattr(running, "wait_for_quiet", lambda limit, max_wait_s, log: 0.0)
    monkeypatch.setattr(running, "sample_others", lambda seconds=1.0: 0.0)
    monkeypatch.setattr(running, "measure_peaks", lambda **kw: {})
    data = br.run(quick=True, startup=False, memory=False, log=lambda m: None, retries=2)
    assert calls == [None, ["bench/test_x.py::test_relu[relu-mlp-256x512-numba]"]]
    assert not br.busy_rows(br.records(data)) and len(data["benchmarks"]) == 2
    assert data["kernprop_report"]["retried"] == 1
    assert "Timed again after waiting (bounded) for a quiet machine: 1 busy rows" in br.render(data)


def test_others_cores_of_two_samples():
    assert machine.others_cores((0.0, 10.0, 1.0), (2.0, 13.0, 2.0)) == pytest.approx(1.0)  # 3 s busy, 1 ours
    assert machine.others_cores((0.0, 10.0, 1.0), (1.0, 10.5, 2.0)) == 0.0  # ticks lag: never below 0
    assert machine.others_cores(None, (1.0, 1.0, 1.0)) is None
    sample = machine.cpu_sample()
    if sample is not None:  # Linux
        assert machine.others_cores(sample, machine.cpu_sample()) >= 0.0


# --- the plot ---------------------------------------------------------------------------


def test_plot_words_name_the_machine_threads_commit_and_busy():
    data = _busy_run()
    info = br.plot_info(data)
    assert info == {"cpu": "Test CPU 9000", "threads": "threads: numba/cython 2, torch 2, OpenBLAS 2",
                    "commit": "0123456+dirty"}
    words = br.plot_text(br.records(data), info=info)
    assert words["stamp"] == br.BUSY_STAMP == "BUSY: unreliable"
    assert "Test CPU 9000" in words["subtitle"] and "commit 0123456+dirty" in words["subtitle"]
    assert "threads: numba/cython 2" in words["subtitle"]
    assert "BUSY: unreliable: 2 of 7 rows" in words["title"]
    assert words["labels"] == ["relu 256x512 ‡ busy", "softmax 65536x10 ‡ busy", "softmax 4096x1000"]
    quiet = _data([_bench("relu", "256x512", b, 1e-5, others=0.0) for b in ("numpy", "numba")])
    quiet["kernprop_report"]["dirty"] = False
    words = br.plot_text(br.records(quiet), info=br.plot_info(quiet))
    assert words["stamp"] == "" and "BUSY" not in words["title"] and "0123456 " not in words["subtitle"]
    assert words["subtitle"].endswith("commit 0123456")


def test_plot_bars_grow_from_one_and_the_png_is_stamped(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[plot]')")
    import matplotlib.pyplot as plt

    data = _busy_run()
    recs = br.records(data)
    fig = br.figure(recs, info=br.plot_info(data))
    try:
        ax = fig.axes[0]
        bars = [p for p in ax.patches if p.get_width() != 0]
        assert bars and all(p.get_x() == pytest.approx(1.0) for p in bars)
        ends = sorted(round(p.get_x() + p.get_width(), 6) for p in bars)
        assert ends[0] < 1 < ends[-1]  # a slower bar grows left, a faster one right
        texts = [t.get_text() for t in fig.texts]
        assert "BUSY: unreliable" in texts
        assert "Test CPU 9000" in ax.get_title() and "0123456+dirty" in ax.get_title()
        assert [t.get_text() for t in ax.get_yticklabels()][0] == "relu 256x512 ‡ busy"
    finally:
        plt.close(fig)
    path = tmp_path / "speedups.png"
    assert br.plot(recs, path, info=br.plot_info(data)) == f"wrote {path} (BUSY: unreliable)"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the harness: a block per contender --------------------------------------------------


class _FakeBenchmark:
    """pytest-benchmark's fixture, reduced to what ``Harness.run`` uses; logs the calls."""

    disabled = False

    def __init__(self, log):
        self.log, self.extra_info, self.group = log, {}, None

    def __call__(self, fn):
        self.log.append("timed")
        for _ in range(3):
            fn()

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        self.__call__(fn)


class _Config:
    def getoption(self, name, default=None):
        return 0.1


def test_harness_pauses_then_calls_once_untimed_then_times_a_block(monkeypatch):
    log = []
    monkeypatch.setattr(benchlib.time, "sleep", lambda s: log.append(f"sleep {s}"))
    bench = _FakeBenchmark(log)
    harness = benchlib.Harness(bench, _Config())
    harness.run("relu", benchlib.Shape("mlp", (4, 4)), "numpy", lambda: log.append("call"), check=lambda r: None)
    assert log == ["call", f"sleep {benchlib.PAUSE_S}", "call", "timed", "call", "call", "call"]
    assert 0.1 <= benchlib.PAUSE_S <= 0.2
    if machine.cpu_sample() is not None:
        assert bench.extra_info["others_cores"] >= 0.0
