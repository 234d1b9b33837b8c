"""bench/gemm.py runs and its numbers are sane (small shapes, untimed: CI's check)."""

import gemm


def test_gemm_report_runs():
    times, errors = gemm.measure([(37, 65, 41)])
    out = times[(37, 65, 41)]
    assert all(seconds > 0 for seconds in out.values())
    assert errors[(37, 65, 41)] < 2e-5  # bf16x3 (or fp32, where it runs for bf16x3)
    peak = gemm.peaks(1)
    assert peak["fp32"] > 0
    assert "| 37x65x41 | bf16 |" in gemm.table(times, errors, peak)
