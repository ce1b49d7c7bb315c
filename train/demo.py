"""``python -m train.demo``: RGSA + RGTR against the average-pooling baseline on the synthetic set.

Generates the synthetic MARS-layout set if it is missing, trains both heads with the same budget
(``configs/synthetic.yaml``) in ``--nproc`` DDP processes on the CPU (torchrun, gloo), evaluates
them, prints a table (mAP, mINP, rank-1/5/10, wall time) and writes, under ``--output``:
results.json, cmc.png (both curves) and per model <head>/eval/{metrics.json, cmc.png, ranking.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HEADS = {"relation": "RGSA + RGTR", "avgpool": "avg-pool baseline"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_one(head: str, args: argparse.Namespace) -> tuple[dict, float]:
    output = Path(args.output) / head
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={args.nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "train", "--config", args.config,
        f"model.head={head}", f"run.output={output}", "run.device=cpu", *args.overrides,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    print(f"\n=== {HEADS[head]}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - start
    return json.loads((output / "eval" / "metrics.json").read_text()), seconds


def table(results: dict[str, tuple[dict, float]]) -> str:
    lines = [
        "| model             |  mAP  | mINP  | rank-1 | rank-5 | rank-10 | wall (s) |",
        "|-------------------|-------|-------|--------|--------|---------|----------|",
    ]
    for head, (m, seconds) in results.items():
        cmc = m["cmc"]
        lines.append(
            f"| {HEADS[head]:<17} | {100 * m['mAP']:5.1f} | {100 * m['mINP']:5.1f} | {100 * cmc[0]:6.1f} "
            f"| {100 * cmc[4]:6.1f} | {100 * cmc[9]:7.1f} | {seconds:8.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--nproc", type=int, default=2, help="DDP processes per model (gloo on CPU)")
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to both models")
    args = parser.parse_args(argv)

    from train.config import load_config
    from train.data import generate_synthetic

    config = load_config(args.config, args.overrides)
    root = Path(config.data.root)
    start = time.perf_counter()
    if config.data.name == "synthetic" and not (root / "info" / "query_IDX.mat").is_file():
        print(f"generating the synthetic set under {root} ...", flush=True)
        generate_synthetic(root, seed=config.run.seed)
    results = {head: train_one(head, args) for head in HEADS}
    total = time.perf_counter() - start

    from train.plots import plot_cmc

    output = Path(args.output)
    plot_cmc({HEADS[h]: m["cmc"] for h, (m, _) in results.items()}, output / "cmc.png")
    summary = {h: {"metrics": m, "wall_seconds": s} for h, (m, s) in results.items()}
    summary["total_wall_seconds"] = total
    (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table(results)}\n\ntotal wall time {total:.0f} s; pictures under {output}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
