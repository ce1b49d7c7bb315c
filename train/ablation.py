"""``python -m train.ablation``: the module ablation on the synthetic set, several seeds per row.

Every row trains the same backbone on the same data with the same budget (``configs/synthetic.yaml``
plus the overrides given here, applied to every row alike); rows differ only in the head: average
pooling, or RGSA + RGTR with an (inner, outer) activation pair. Each run is one process
(``python -m train``); ``--jobs`` runs that many at once. Writes per-run metrics under ``--output``
and prints a table of mean ± std over the seeds: mAP, mINP, rank-1 and seconds per training step
(median over the epochs of each run, wall time). docs/method_study.md records the commands and
results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: name → overrides that select the head. The rows of docs/method_study.md.
ROWS = {
    "avgpool": ["model.head=avgpool"],
    "relu/relu": ["model.head=relation", "model.inner=relu", "model.outer=relu"],
    "identity/relu": ["model.head=relation", "model.inner=identity", "model.outer=relu"],
    "relu/identity": ["model.head=relation", "model.inner=relu", "model.outer=identity"],
}

EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+:.*seconds ([0-9.]+)")


def run_one(row: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and evaluate one (row, seed); the metrics plus the median wall seconds per step."""
    output = Path(args.output) / row.replace("/", "-") / f"seed{seed}"
    log = output / "log.txt"
    result_file = output / "result.json"
    if result_file.is_file():  # finished earlier: the runs are deterministic per seed
        return json.loads(result_file.read_text())
    output.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "train", "--config", args.config, *ROWS[row], f"run.seed={seed}",
        f"run.output={output}", "run.device=cpu", "run.progress=false", *args.overrides,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        subprocess.run(command, check=True, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    epoch_seconds = [float(m.group(2)) for line in log.read_text().splitlines() if (m := EPOCH_LINE.match(line))]
    metrics = json.loads((output / "eval" / "metrics.json").read_text())
    result = {
        "row": row,
        "seed": seed,
        "mAP": metrics["mAP"],
        "mINP": metrics["mINP"],
        "rank1": metrics["cmc"][0],
        "epoch_seconds": epoch_seconds,
        "wall_seconds": wall,
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{row:14s} seed {seed}: mAP {100 * result['mAP']:.1f} ({wall:.0f} s)", flush=True)
    return result


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(results: list[dict], steps_per_epoch: int) -> str:
    lines = [
        "| head (inner/outer) | seeds | mAP | mINP | rank-1 | s / step |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        per_step = [statistics.median(r["epoch_seconds"]) / steps_per_epoch for r in runs]
        name = "average pooling" if row == "avgpool" else f"RGSA + RGTR {row}"
        lines.append(
            f"| {name} | {len(runs)} | {_mean_std([r['mAP'] for r in runs], 100)} "
            f"| {_mean_std([r['mINP'] for r in runs], 100)} | {_mean_std([r['rank1'] for r in runs], 100)} "
            f"| {_mean_std(per_step, digits=2)} |"
        )
    return "\n".join(lines)


def steps_per_epoch(args: argparse.Namespace) -> int:
    """P×K steps in one pass of the sampler over the training identities (one process)."""
    from train.config import load_config
    from train.run import load_data

    config = load_config(args.config, args.overrides)
    dataset = load_data(config)
    identities = len({t.pid for t in dataset.train})
    steps = -(-identities // config.data.P)
    cap = config.optim.steps_per_epoch
    return min(steps, cap) if cap > 0 else steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one process each)")
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to every row alike")
    args = parser.parse_args(argv)

    jobs = [(row, seed) for seed in args.seeds for row in args.rows]  # seed-major: rows finish together
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    text = table(results, steps_per_epoch(args))
    (Path(args.output) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (Path(args.output) / "table.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
