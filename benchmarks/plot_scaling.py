"""Plots of the scaling benchmark: time and peak memory against N, per backend, log–log.

Reads benchmarks/results/scaling_{rgsa,op}_<device>.csv (written by bench_scaling.py) and writes
scaling_<bench>_<device>.png next to it. Cases not run (over budget, timeout) appear as crosses at
their predicted memory, so the reader sees where the reference stops.

    python benchmarks/plot_scaling.py                # every scaling CSV in benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = {"reference": "tab:red", "cpu": "tab:blue", "sort": "tab:green", "triton": "tab:purple", "cuda": "tab:orange"}
STYLES = {"relu": "-", "identity": "--"}


def read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    series = defaultdict(list)
    for row in rows:
        series[(row["outer"], row["backend"])].append(row)
    for points in series.values():
        points.sort(key=lambda r: int(r["N"]))
    return series


def _title(rows: list[dict]) -> str:
    first = rows[0]
    if first["bench"] == "rgsa":
        what = f"RGSA training step, B={first['B']}, C={first['C']} (H={first['H']}, R={first['R']})"
    else:
        what = f"global_relation fwd+bwd, B={first['B']}, N=M, H={first['H']}, R={first['R']}, inner=relu"
    threads = int(first["threads"])
    return f"{what}\n{first['machine']}, {threads} thread{'s' if threads != 1 else ''}"


def _time_column(rows: list[dict]) -> tuple[str, str]:
    """CPU rows are timed by process CPU time (robust on a shared machine), CUDA rows by wall time."""
    if rows[0]["device"] == "cpu":
        return "cpu_ms", "CPU time per step (s, all threads)"
    return "time_ms", "time per step (s, wall)"


def plot(path: Path, budget_gb: float | None) -> Path:
    rows = read(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    time_column, time_label = _time_column(rows)
    figure, (time_axis, peak_axis, step_axis) = plt.subplots(1, 3, figsize=(16, 4.8))
    for (outer, backend), points in sorted(_series(rows).items()):
        label = f"{backend}, outer={outer}"
        colour, style = COLOURS.get(backend, "black"), STYLES.get(outer, ":")
        ran = [r for r in points if r["status"] == "ok"]
        skipped = [r for r in points if r["status"] != "ok"]
        N = [int(r["N"]) for r in ran]
        for axis, values in (
            (time_axis, [float(r[time_column]) / 1e3 for r in ran]),
            (peak_axis, [float(r["peak_mb"]) / 1024 for r in ran]),
            (step_axis, [float(r["step_mb"]) / 1024 for r in ran]),
        ):
            axis.plot(N, values, style, color=colour, marker="o", label=label)
        if skipped:
            peak_axis.plot(
                [int(r["N"]) for r in skipped],
                [float(r["predicted_mb"]) / 1024 for r in skipped],
                "x",
                color=colour,
                markersize=9,
                label=f"{label}: {skipped[0]['status']} (predicted)",
            )
    if budget_gb is not None:
        peak_axis.axhline(budget_gb, color="grey", linestyle=":", label=f"budget {budget_gb:g} GB")
    sizes = sorted({int(r["N"]) for r in rows})
    for axis, ylabel in (
        (time_axis, time_label),
        (peak_axis, "peak memory of the process (GB)"),
        (step_axis, "memory the step adds (GB)"),
    ):
        axis.set(xscale="log", yscale="log", xlabel="N (items)", ylabel=ylabel)
        axis.set_xticks(sizes, labels=[str(n) for n in sizes])
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.yaxis.set_minor_formatter(ticker.NullFormatter())
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.suptitle(_title(rows), fontsize=10)
    figure.tight_layout()
    out = path.with_suffix(".png")
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="*", type=Path, help="CSV files (default: results/scaling_{rgsa,op}_*.csv)")
    parser.add_argument("--budget-gb", type=float, default=8.0, help="draw the memory budget line (GB)")
    args = parser.parse_args()
    paths = args.csv or sorted([*RESULTS.glob("scaling_rgsa_*.csv"), *RESULTS.glob("scaling_op_*.csv")])
    if not paths:
        parser.error(f"no scaling CSV given or found in {RESULTS}")
    for path in paths:
        print(f"wrote {plot(path, args.budget_gb)}")


if __name__ == "__main__":
    main()
