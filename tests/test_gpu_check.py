"""benchmarks/gpu_check: its Python steps in dry mode (CPU tensors, Triton interpreter), so the
one-shot GPU check cannot rot between the rare sessions that have a GPU; the whole script too (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_check import Case, Limits  # noqa: E402

import fastrel  # noqa: E402


def test_chunked_exact_reference_equals_the_reference_in_one_piece():
    case = Case("masked", B=3, N=7, M=5, H=4, R=3, masked=True)
    t = gpu_check.make_inputs(case, torch.float64, "cpu")
    whole = gpu_check.exact_reference(t, budget_bytes=1 << 30)
    leaves = [t[k].clone().requires_grad_() for k in ("a", "b", "weight", "bias")]
    out = fastrel.reference.global_relation(*leaves, key_mask=t["key_mask"])
    expected = [out, *torch.autograd.grad(out, leaves, t["grad"])]
    for budget in (1, 5 * (3 * 4 + 2 * 3) * 8 * 3):  # one query row at a time; three rows at a time
        chunked = gpu_check.exact_reference(t, budget_bytes=budget)
        for name, x in zip(gpu_check.GRADIENTS, expected):
            torch.testing.assert_close(chunked[name], x.detach(), rtol=1e-12, atol=1e-12, msg=name)
            torch.testing.assert_close(whole[name], x.detach(), rtol=1e-12, atol=1e-12, msg=name)


def test_host_time_is_the_median_of_the_calls_issue_times():
    """measure.host_seconds times each call from an idle device to its return, the median of them."""
    import measure

    waits = iter([0.03, 0.001, 0.002, 0.03, 0.03])
    seconds = measure.host_seconds(lambda: time.sleep(next(waits)), "cpu", repeats=5)
    assert 0.03 <= seconds < 0.5


def test_a_repeatable_row_says_whether_a_later_call_returns_bitwise_the_first_result():
    case = Case("tiny", B=2, N=3, M=3, H=4, R=2)
    t = gpu_check.make_inputs(case, torch.float32, "cpu")
    limits = Limits(deadline=time.perf_counter() + 60, compile_budget_s=0, memory_bytes=1 << 30, min_time=0,
                    min_repeats=1, max_repeats=2)
    fixed = gpu_check.implementation("reference", "inductor")
    drift = iter(range(1, 100))

    def drifting(a, b, weight, bias, key_mask):  # a result that moves by one ulp per call
        out = fixed(a, b, weight, bias, key_mask)
        return out * (1 + next(drift) * torch.finfo(out.dtype).eps)

    assert gpu_check.measure_row(fixed, t, None, "fwdbwd", "cpu", limits, repeatable=True)["bitwise_repeat"]
    assert not gpu_check.measure_row(drifting, t, None, "fwdbwd", "cpu", limits, repeatable=True)["bitwise_repeat"]
    assert "bitwise_repeat" not in gpu_check.measure_row(fixed, t, None, "fwdbwd", "cpu", limits)


def test_plan_measures_bf16_fused_rows_first_and_the_deterministic_backward_last():
    order = gpu_check.plan(gpu_check.GPU_CASES, ["triton", "reference", "compiled", "triton_det"])
    labels = [(dtype, impl) for _, dtype, impl, _ in order]
    assert labels[0] == ("bfloat16", "triton")
    first_compiled = labels.index(("bfloat16", "compiled"))
    assert all(impl != "compiled" for _, impl in labels[:first_compiled])
    assert labels.index(("float32", "triton")) > first_compiled
    assert all(impl == "triton_det" for _, impl in labels[-len(gpu_check.GPU_CASES):])
    assert len(order) == len(gpu_check.GPU_CASES) * (2 * 3 * 2 + 1)


def test_smoke_records_every_check_and_agrees_in_dry_mode(tmp_path):
    path = tmp_path / "smoke.jsonl"
    assert gpu_check.smoke(["reference", "sort"], dry=True, path=path)
    rows = gpu_check.read_rows(path)
    assert len(rows) == 2 * len(gpu_check.DRY_SMOKE_SHAPES) * len(gpu_check.DTYPES)
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["mask"] for r in rows} == {"none", "ragged", "empty_row"}
    assert all(r["errors"]["da"] <= r["allowed"]["da"] for r in rows)


def test_timing_rows_carry_error_memory_and_skip_reasons_then_the_report_gathers_them(tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    gpu_check.ceilings(dry=True, path=rows_path)
    limits = Limits(time.perf_counter() + 600, compile_budget_s=0.0, memory_bytes=1 << 30, min_time=0.0,
                    min_repeats=1, max_repeats=1)
    cases = gpu_check.DRY_CASES[:2]
    gpu_check.time_rows(cases, ["triton", "reference", "compiled", "cuda"], True, rows_path, limits, "eager")
    rows = [r for r in gpu_check.read_rows(rows_path) if r["kind"] == "row"]
    assert len(rows) == len(gpu_check.plan(cases, ["triton", "reference", "compiled", "cuda"]))
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in ok} == {"triton", "reference", "compiled"}
    for r in ok:
        assert r["rel_err"] < (0.25 if r["dtype"] == "bfloat16" else 1e-5), r  # bf16 sums lose bits
        assert r["time_ms"] > 0 and r["peak_mib"] >= 0 and r["pct_of_matmul_peak"] > 0
        assert r["stream_ms"] > 0 and r["stream_pct_of_matmul_peak"] > 0
    assert all(r["status"].startswith("skipped: backend 'cuda'") for r in rows if r["impl"] == "cuda")
    # A zero compile budget lets one torch.compile row run, then skips the others with the reason.
    compiled = [r for r in rows if r["impl"] == "compiled"]
    assert compiled[0]["status"] == "ok"
    assert all("torch.compile budget spent" in r["status"] for r in compiled[1:])

    (tmp_path / "steps.tsv").write_text("time\tok\t0\t12\t140\nmemcheck\tunsupported: x\t\t0\t\n")
    result = gpu_check.report(tmp_path, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["ceilings"]["matmul_bf16_tflops"] > 0
    assert len(saved["rows"]) == len(rows)
    assert [s["name"] for s in saved["steps"]] == ["time", "memcheck"]
    ratio = next(r for r in result["ratios"] if r["impl"] == "triton" and r["name"] == "paper")
    assert ratio["speedup_vs_reference"] > 0
    with open(tmp_path / "out" / "gpu_check_rows.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "triton" in gpu_check.summary(result)


def test_rows_past_the_time_budget_are_written_as_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    limits = Limits(time.perf_counter() - 1, 60.0, 1 << 30, 0.0, 1, 1)
    gpu_check.time_rows(gpu_check.DRY_CASES[:1], ["reference"], True, path, limits, "eager")
    rows = gpu_check.read_rows(path)
    assert len(rows) == 4 and all(r["status"] == "skipped: the step's time budget was spent" for r in rows)


@pytest.mark.slow
def test_the_whole_dry_run_passes_and_returns_at_most_eight_files(tmp_path):
    env = dict(os.environ, PY=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu_check.json", "gpu_check_logs.tar.gz", "gpu_check_rows.csv"]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s["status"] for s in result["steps"]}
    expected = ["preflight", "smoke", "time", "train", "host", "build", "build_wait", "cuda", "gpu_tests",
                "cuda_tests", "triton_tests", "memcheck", "racecheck"]
    assert sorted(steps) == sorted(expected), steps
    assert all(status == "ok" or status.startswith("dry") for status in steps.values()), steps
    assert {r["impl"] for r in result["rows"] if r["status"] == "ok"} == {
        "triton", "triton_det", "reference", "compiled", "cpu", "cpu_det"}


def test_the_launch_sweep_checks_and_times_every_variant_in_dry_mode(tmp_path):
    """benchmarks/tile_sweep.py (the device's second call): every dry variant compiles in the
    worker pool, agrees with the float64 reference and is timed; a deterministic one repeats bitwise."""
    import tile_sweep

    assert tile_sweep.main(["--out", str(tmp_path), "--dry", "--workers", "1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(g.variants) for g in tile_sweep.dry_groups())
    for row in rows:
        assert row["status"] == "ok", row
        assert max(row["errors"]) < 1e-5 and row["time_ms"] > 0, row
        assert row["bitwise_repeat"] or row["kind"] != "bwd_det", row


def test_host_profile_times_each_stage_of_a_call_and_ranks_the_host_work(capsys):
    """benchmarks/host_profile.py (a device session's third command) in a CPU run: every stage's
    host time, then the op table and the Python profile."""
    import host_profile

    assert host_profile.main(["--batch", "2", "--frames", "3", "--calls", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    for stage in ("forward and backward", "forward", "kernels module forward", "kernels module backward"):
        assert f"host ms, {stage} " in out, out
    assert "host time per op and runtime call" in out and "by tottime" in out and "by cumulative" in out
