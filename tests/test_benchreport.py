"""kernprop bench's report (``bench/benchreport``): parsing pytest-benchmark JSON, the
Markdown tables and ratios, --compare, --plot, and the errors.  Synthetic JSON only:
nothing is benchmarked here."""

import json
import sys
from pathlib import Path

import pytest

import kernprop
from kernprop import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import benchreport as br  # noqa: E402 - bench/ of this checkout, not an installed package
from benchreport import running  # noqa: E402


def _bench(op, shape, backend, median, *, label="mlp", family=None, flops=0, nbytes=0, minimum=None,
           rounds=100):
    """One benchmark entry as pytest-benchmark writes it (with our extra_info)."""
    return {
        "group": f"{op} {shape}",
        "name": f"test_{op}[{op}-{label}-{shape}-{backend}]",
        "fullname": f"bench/test_x.py::test_{op}[{op}-{label}-{shape}-{backend}]",
        "params": {"op": op, "backend": backend},
        "extra_info": {"op": op, "shape": shape, "shape_label": label, "backend": backend,
                       "family": family or br._family_of(op), "flops": flops, "bytes": nbytes, "threads": 2},
        "stats": {"median": median, "min": median if minimum is None else minimum, "mean": median,
                  "iqr": 0.0, "rounds": rounds},
    }


def _data(benchmarks, **extra):
    data = {
        "machine_info": {
            "system": "Linux", "release": "6.0", "machine": "x86_64",
            "cpu": {"brand_raw": "Test CPU 9000", "count": 2},
            "kernprop": {"versions": {"kernprop": "0.1.0", "numpy": "2.0"}, "threads": 2, "torch_threads": 2,
                         "cpu_count": 2, "quick": False,
                         "backends": {"numpy": "available", "numba": "available", "cython": "available",
                                      "cuda": "no CUDA driver or no CUDA device", "torch": "available"}},
        },
        "commit_info": {"id": "abc123"},
        "benchmarks": benchmarks,
        "datetime": "2026-11-22T20:00:00",
        "version": "5.3.1",
    }
    if extra:
        data["kernprop_report"] = extra
    return data


MATMUL_FLOPS = 2 * 256 * 784 * 512


@pytest.fixture
def run_a():
    return _data([
        _bench("matmul", "256x784x512", "numpy", 4e-3, flops=MATMUL_FLOPS),
        _bench("matmul", "256x784x512", "numba", 2e-3, flops=MATMUL_FLOPS),
        _bench("matmul", "256x784x512", "cython", 8e-3, flops=MATMUL_FLOPS),
        _bench("matmul", "256x784x512", "torch", 1e-3, flops=MATMUL_FLOPS),
        _bench("matmul", "2048x2048x2048", "numpy", 0.5, label="large", flops=2 * 2048**3),
        _bench("matmul", "2048x2048x2048", "numba", 1.0, label="large", flops=2 * 2048**3),
        _bench("relu", "256x512", "numpy", 50e-6, nbytes=2 * 4 * 256 * 512),
        _bench("relu", "256x512", "numba", 10e-6, nbytes=2 * 4 * 256 * 512),
        _bench("relu", "256x512", "torch", 20e-6, nbytes=2 * 4 * 256 * 512),
        _bench("relu", "32x64", "numpy", 3e-6, label="small", nbytes=2 * 4 * 32 * 64),
    ], peaks={"copy_gbs": 10.0, "copy_bytes": 2**28, "gemm_gflops": 100.0, "gemm_n": 2048},
        command="kernprop bench", commit="abc123", dirty=False)


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _row(text, *cells):
    """The Markdown table line starting with these cells."""
    prefix = "| " + " | ".join(cells) + " |"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no row starting {prefix!r} in:\n{text}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_records_parse_and_sort(run_a):
    recs = br.records(run_a)
    assert len(recs) == 10
    assert [r.op for r in recs][:6] == ["matmul"] * 6  # matmul family first
    mlp = [r for r in recs if r.shape == "256x784x512"]
    assert [r.backend for r in mlp] == ["numpy", "numba", "cython", "torch"]
    assert recs[0].median == 4e-3 and recs[0].flops == MATMUL_FLOPS
    # small before MLP-sized within an op
    relu = [r.shape for r in recs if r.op == "relu"]
    assert relu[0] == "32x64"


def test_throughput_units():
    gemm = br.Record("matmul", "2x2x2", "small", "numpy", "matmul", 1e-3, 1e-3, 0, 2_000_000, 48, 10, "x")
    assert gemm.throughput() == pytest.approx((2.0, "GFLOP/s"))
    relu = br.Record("relu", "4x4", "small", "numpy", "activations", 1e-3, 1e-3, 0, 16, 3_000_000, 10, "x")
    assert relu.throughput() == pytest.approx((3.0, "GB/s"))


def test_headline_ratios(run_a):
    text = br.headline(br.records(run_a))
    header = text.splitlines()[0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["op"] + [f"{c} vs {b} (small / MLP / large)" for c in ("numba", "cython")
                             for b in ("numpy", "torch")]
    row = dict(zip(cols, _row(text, "matmul")))
    # MLP: numpy 4 ms, numba 2 ms, cython 8 ms, torch 1 ms; large: numpy 0.5 s, numba 1 s
    assert row["numba vs numpy (small / MLP / large)"] == "– / 2.00 / 0.50"
    assert row["numba vs torch (small / MLP / large)"] == "– / 0.50 / –"
    assert row["cython vs numpy (small / MLP / large)"] == "– / 0.50 / –"
    relu = dict(zip(cols, _row(text, "relu")))
    assert relu["numba vs numpy (small / MLP / large)"] == "– / 5.00 / –"
    assert relu["numba vs torch (small / MLP / large)"] == "– / 2.00 / –"


def test_headline_geometric_mean_of_large_shapes():
    data = _data([
        _bench("softmax", "4096x1000", "numpy", 4.0, label="large"),
        _bench("softmax", "4096x1000", "numba", 1.0, label="large"),   # 4x
        _bench("softmax", "65536x10", "numpy", 1.0, label="large"),
        _bench("softmax", "65536x10", "numba", 4.0, label="large"),    # 0.25x
        _bench("softmax", "32x64", "numpy", 30.0, label="small"),
        _bench("softmax", "32x64", "numba", 1.0, label="small"),       # 30x
    ])
    text = br.headline(br.records(data))
    assert _row(text, "softmax")[1] == "30 / – / 1.00"


def test_family_table_times_throughput_and_peak(run_a):
    text = br.family_tables(br.records(run_a), {"copy_gbs": 10.0, "gemm_gflops": 100.0})
    assert "### matmul" in text and "### activations" in text
    row = _row(text, "matmul", "256x784x512 (MLP-sized)")
    # numpy 4 ms: 205.5 MFLOP / 4 ms = 51.4 GFLOP/s; torch 1 ms is the best, 206 GFLOP/s = 206% of 100
    assert row[2] == "4 ms · 51.4 GFLOP/s"
    assert row[5] == "1 ms · 206 GFLOP/s"
    assert row[-1] == "206%"
    relu = _row(text, "relu", "256x512 (MLP-sized)")
    assert relu[3] == "10 µs · 105 GB/s"  # 1 MiB moved in 10 µs
    assert relu[-1] == "1049%"  # 104.9 GB/s against the 10 GB/s copy peak (in cache)
    assert relu[4] == "–"  # cython did not run relu


def test_render_report(run_a):
    text = br.render(run_a)
    assert text.startswith("# kernprop benchmark report")
    assert "Commit: `abc123`" in text and "Command: `kernprop bench`" in text
    assert "Test CPU 9000, 2 cores" in text
    assert "copy 10.0 GB/s" in text and "GEMM 100.0 GFLOP/s" in text
    assert "cuda: not measured (no GPU lent" in text
    assert "## Headline" in text and "### activations" in text
    assert ") †" not in text and "medians are over" not in text  # no noisy medians here
    assert "machine was busy" not in text
    run_a["kernprop_report"]["load"] = [1.0, 5.0]
    assert "Load average (1 min) before / after the benchmarks: 1.00 / 5.00" in br.render(run_a)
    assert "**The machine was busy** (load above its 2 cores" in br.render(run_a)
    assert "waits at every parallel region" in br.render(run_a)
    run_a["machine_info"]["kernprop"]["threads"] = 1
    assert "every backend, on one thread, shared its core" in br.render(run_a)


def test_noisy_medians_are_busy_and_left_out_of_the_headline():
    data = _data([
        _bench("relu", "256x512", "numpy", 50e-6, minimum=40e-6, nbytes=8),
        _bench("relu", "256x512", "numba", 16e-3, minimum=10e-6, nbytes=8),  # descheduled rounds
    ])
    text = br.render(data)
    assert "**BUSY: unreliable.** 1 of 2 rows" in text
    assert "(min 10 µs) ‡" in text
    assert "| relu | – / busy / – |" in text  # not 50 µs / 16 ms = 0.003
    assert "0.003" not in text.split("## Every op")[0]
    assert "| relu | 256x512 | numba | median 1600.0× its fastest round |" in text


def test_startup_and_memory_sections(run_a):
    ops = {"matmul": 8.0, "relu": 2.0}
    run_a["kernprop_report"]["startup"] = {
        "numba": {"cold": {"import": 0.2, "total": 30.0, "ops": ops, "warmup": None},
                  "cached": {"import": 0.2, "total": 1.5, "ops": ops, "warmup": None}},
        "cython": {"error": "failed: boom"},
    }
    run_a["kernprop_report"]["memory"] = {
        "rows": 4096, "classes": 32000, "features": 512,
        "results": [{"backend": "numba", "path": "fused linear_cross_entropy", "peak": 200 * 2**20, "seconds": 2.0},
                    {"backend": "numba", "path": "unfused", "peak": 1100 * 2**20, "seconds": 3.0}],
    }
    text = br.render(run_a)
    assert _row(text, "numba", "200 ms")[2:] == ["30 s", "1.5 s", "matmul 8 s"]
    assert _row(text, "relu", "2 s") == ["relu", "2 s", "2 s"]  # per-op details
    assert "| cython | failed: boom |" in text
    assert _row(text, "numba", "fused linear_cross_entropy")[2] == "200.0 MiB"
    assert _row(text, "numba", "unfused")[2] == "1.1 GiB"
    assert "4096 rows × 32000 classes × 512 features" in text
    assert "warmup" not in text
    for run in ("cold", "cached"):
        run_a["kernprop_report"]["startup"]["numba"][run]["warmup"] = 20.0 if run == "cold" else 0.5
    text = br.render(run_a)
    assert _row(text, "numba", "200 ms") == ["numba", "200 ms", "20 s", "500 ms", "30 s", "1.5 s", "matmul 8 s"]


def test_compare(run_a):
    b = json.loads(json.dumps(run_a))
    b["benchmarks"] = [x for x in b["benchmarks"] if x["extra_info"]["backend"] != "cython"]
    for x in b["benchmarks"]:
        if x["extra_info"]["backend"] == "numba":
            x["stats"]["median"] /= 2  # numba twice as fast in B
    b["benchmarks"].append(_bench("mse", "32x64", "numba", 1e-5, label="small"))
    text = br.compare(run_a, b, "a.json", "b.json")
    assert _row(text, "matmul", "256x784x512", "numba")[3:] == ["2 ms", "1 ms", "0.500", "faster"]
    assert _row(text, "matmul", "256x784x512", "numpy")[5:] == ["1.000", "same"]
    assert "Only in a.json: matmul 256x784x512 cython" in text
    assert "Only in b.json: mse 32x64 numba" in text
    assert "9 benchmarks in both" in text
    assert "Medians within 10%: 6, within 25%: 6, within 2×: 9, beyond 2×: 0 (of 9)." in text
    assert "Fastest rounds within 10%: 9," in text  # only the medians changed


def test_cli_compare_and_from_json(tmp_path, run_a, capsys):
    a = _write(tmp_path, "a.json", run_a)
    slower = json.loads(json.dumps(run_a))
    for x in slower["benchmarks"]:
        x["stats"]["median"] *= 3
    b = _write(tmp_path, "b.json", slower)
    assert cli.main(["bench", "--compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "# Comparison: " in out and "| 3.000 | slower |" in out
    report = tmp_path / "report.md"
    assert cli.main(["bench", "--from-json", a, "--output", str(report)]) == 0
    assert "## Headline" in report.read_text()


def test_bad_json_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    other = _write(tmp_path, "other.json", {"hello": 1})
    assert cli.main(["bench", "--compare", str(bad), other]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert cli.main(["bench", "--from-json", other]) == 2
    assert "not a pytest-benchmark JSON file" in capsys.readouterr().err
    assert cli.main(["bench", "--from-json", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_bench_dir(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "site-packages" / "kernprop" / "__init__.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    monkeypatch.setattr(kernprop, "__file__", str(fake))
    with pytest.raises(br.BenchError, match="not next to the kernprop package"):
        br.find_bench_dir()
    assert cli.main(["bench", "--backends", "numba"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and err.count("\n") == 1  # one line
    # --quick still answers "is it fast here?" from an installed package
    from kernprop import speed

    real = speed.gemm_rates
    monkeypatch.setattr(speed, "gemm_rates", lambda: real(shapes=((9, 31, 7),), block_s=0.01))
    assert cli.main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "GEMM row:" in out and "9x31x7: numpy" in out and "source checkout's bench/" in out
    for words in (["bench", "--help"], ["bench", "-h"], ["bench", "-o", str(tmp_path / "no" / "x.md"), "--help"]):
        assert cli.main(words) == 0  # an installed wheel: --help still helps
        assert capsys.readouterr().out.startswith("usage: kernprop bench")


def test_bench_dir_of_this_checkout():
    assert (br.find_bench_dir() / "test_matmul.py").is_file()


def test_unknown_op_or_backend(capsys):
    assert cli.main(["bench", "--ops", "matmul,nope"]) == 2
    assert "unknown op(s) nope" in capsys.readouterr().err
    assert cli.main(["bench", "--backends", "numba,gpu"]) == 2
    assert "unknown backend(s) gpu" in capsys.readouterr().err


def test_run_composes_pytest_and_measurements(tmp_path, run_a, monkeypatch):
    """``run`` with the measuring parts replaced: the pytest command and the stored extras."""
    seen = {}

    def fake_pytest(bench_dir, json_path, quick, ops, backends, max_time, min_rounds=15, log_path=None):
        seen.update(quick=quick, ops=ops, backends=backends, max_time=max_time)
        with open(json_path, "w") as f:
            json.dump(_data(run_a["benchmarks"]), f)
        return seen.get("status", 0)

    monkeypatch.setattr(running, "run_pytest", fake_pytest)
    monkeypatch.setattr(running, "wait_for_quiet", lambda limit, max_wait_s, log: 0.1)
    monkeypatch.setattr(running, "sample_others", lambda seconds=1.0: 0.2)
    monkeypatch.setattr(running, "measure_peaks", lambda **kw: {"copy_gbs": 1.0, "copy_bytes": 1, "gemm_gflops": 2.0,
                                                           "gemm_n": 8})
    monkeypatch.setattr(running, "measure_startup", lambda backends: {"seen": {"error": ",".join(backends)}})
    monkeypatch.setattr(running, "measure_lce_memory", lambda **kw: {"rows": kw["rows"], "classes": 1, "features": 1,
                                                                "results": []})
    out = tmp_path / "run.json"
    data = br.run(quick=True, ops=["matmul", "linear_cross_entropy"], backends=["numpy", "numba"],
                  json_path=str(out), command="kernprop bench --quick", log=lambda m: None)
    assert seen == {"quick": True, "ops": ["matmul", "linear_cross_entropy"], "backends": ["numpy", "numba"],
                    "max_time": 0.1}
    extra = data["kernprop_report"]
    assert extra["startup"] == {"seen": {"error": "numpy,numba"}}
    assert extra["memory"]["rows"] == 512
    assert extra["commit"] and extra["peaks"]["gemm_gflops"] == 2.0
    assert tuple(extra["others"]) == (0.1, 0.2)
    saved = json.loads(out.read_text())
    assert saved["kernprop_report"]["command"] == "kernprop bench --quick"
    assert "## Memory" in br.render(saved) and "Warning" not in br.render(saved)

    seen["status"] = 1  # a benchmark failed its check: the report says so at the top
    data = br.run(quick=True, ops=["matmul"], json_path=str(out), log=lambda m: None)
    assert "**Warning: pytest exited with status 1" in br.render(data)


def test_plot_without_matplotlib(tmp_path, run_a, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(br.BenchError, match=r"pip install -e '\.\[plot\]'"):
        br.plot(br.records(run_a), tmp_path / "x.png")
    a = _write(tmp_path, "a.json", run_a)
    assert cli.main(["bench", "--from-json", a, "--plot", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_plot_writes_png(tmp_path, run_a):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    assert br.plot(br.records(run_a), path) == f"wrote {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_memory_measurement_is_reported(run_a):
    run_a["kernprop_report"]["memory"] = {"rows": 512, "classes": 32000, "features": 512, "results": [],
                                          "error": "ImportError: cannot import name 'x'"}
    text = br.render(run_a)
    assert "Not measured at 512 × 32000 × 512: ImportError: cannot import name 'x'" in text


def test_merge_takes_each_benchmarks_lowest_median(tmp_path, run_a, capsys):
    second = json.loads(json.dumps(run_a))
    for bench in second["benchmarks"]:
        if bench["extra_info"]["backend"] == "numba":
            bench["stats"]["median"] /= 4  # numba 4x faster in run 2, the rest slower
        else:
            bench["stats"]["median"] *= 2
    second["kernprop_report"]["memory"] = {"rows": 1, "classes": 2, "features": 3, "results": []}
    merged = br.merge([run_a, second], ["one.json", "two.json"])
    medians = {r.key: r.median for r in br.records(merged)}
    assert medians[("matmul", "256x784x512", "numba")] == 0.5e-3
    assert medians[("matmul", "256x784x512", "numpy")] == 4e-3
    assert merged["kernprop_report"]["merged"] == {"runs": ["one.json", "two.json"], "taken": [7, 3]}
    assert merged["kernprop_report"]["memory"]["rows"] == 1  # extras of the last run
    text = br.render(merged)
    assert "Merged from 2 runs of the same command" in text and "(7 from one.json, 3 from two.json)" in text
    a, b = _write(tmp_path, "one.json", run_a), _write(tmp_path, "two.json", second)
    out = tmp_path / "merged.json"
    assert cli.main(["bench", "--merge", a, b, "--json", str(out)]) == 0
    assert "| matmul | – / 8.00 / 2.00 |" in capsys.readouterr().out  # numba 0.5 ms vs numpy 4 ms
    assert len(json.loads(out.read_text())["benchmarks"]) == 10


def test_threads_option_sets_every_backends_thread_count():
    env = {}
    br.set_thread_env(1, env)
    assert env == dict.fromkeys(br.THREAD_VARIABLES, "1")
    assert set(br.THREAD_VARIABLES) >= {"NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}


# --- the terminal: a one-screen summary, the report in a file, peaks where the data lives


def test_cache_resident_sizes_are_set_against_their_cache_peak(run_a):
    levels = [{"name": "L2", "bytes": 2**21, "copy_gbs": 200.0}, {"name": "L3", "bytes": 2**25, "copy_gbs": 100.0}]
    peaks = {"copy_gbs": 10.0, "gemm_gflops": 100.0, "levels": levels}
    text = br.family_tables(br.records(run_a), peaks)
    # relu 256x512 moves 1 MiB, within half of the 2 MiB L2: 104.9 GB/s of its 200
    assert _row(text, "relu", "256x512 (MLP-sized)")[-1] == "52% (L2)"
    assert _row(text, "matmul", "256x784x512 (MLP-sized)")[-1] == "206%"  # GEMM: the GFLOP/s peak
    from benchreport.rendering import resident_level

    assert resident_level(2**20, peaks)["name"] == "L2"
    assert resident_level(2**22, peaks)["name"] == "L3"
    assert resident_level(2**30, peaks) is None  # DRAM
    run_a["kernprop_report"]["peaks"].update(levels=levels)
    assert "L2 (2.0 MiB) 200.0 GB/s" in br.render(run_a)


def test_terminal_gets_a_summary_and_the_report_path(tmp_path, run_a, capsys, monkeypatch):
    a = _write(tmp_path, "a.json", run_a)
    report = tmp_path / "report.md"
    assert cli.main(["bench", "--from-json", a, "--output", str(report)]) == 0
    out = capsys.readouterr().out
    assert "## Headline" in report.read_text()
    assert f"full report: {report}" in out
    assert "matmul" in out and "numba vs numpy" in out and "|" not in out
    assert len(out.splitlines()) < 40 and max(len(line) for line in out.splitlines()[:-1]) < 120
    # on a terminal without --output: the report goes to a file in the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["bench", "--from-json", a]) == 0
    assert "full report: " in capsys.readouterr().out and (tmp_path / "kernprop-bench-report.md").is_file()


def test_pytest_output_goes_to_a_log_without_verbose(tmp_path, run_a, monkeypatch):
    from benchreport import command

    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return run_a

    monkeypatch.setattr(command, "run", fake_run)
    assert command.main(["--quick", "--output", str(tmp_path / "r.md")]) == 0
    assert seen["pytest_log"] == str(tmp_path / "r.pytest.log")
    assert command.main(["--quick", "-v", "--output", str(tmp_path / "r.md")]) == 0
    assert seen["pytest_log"] is None
