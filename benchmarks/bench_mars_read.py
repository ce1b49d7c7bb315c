"""Time ``read_mars`` on a synthetic MARS-layout index of the full release's size (no images).

The MARS release lists 509,914 training and 681,089 test frame names over 8,298 and 12,180
tracklets (1,980 queries). This script writes ``info/`` files of that size (frame names, tracklet
tables, query index) and empty ``bbox_*`` folders under a temporary directory, reads them with
``train.data.mars.read_mars`` several times and prints the best and median wall and process CPU
time (CPU time is the figure to compare on a shared machine), plus a
SHA-256 of every list it returned (pids, cameras, frame paths relative to the root), so two
versions of the reader can be checked to return the same lists.

    python benchmarks/bench_mars_read.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.io

from train.data.mars import mars_image_name, read_mars

# Sizes of the MARS release (Zheng et al., ECCV 2016).
TRAIN = {"names": 509_914, "tracklets": 8_298, "pids": 625}
TEST = {"names": 681_089, "tracklets": 12_180, "pids": 636}
QUERIES = 1_980


def _lengths(rng: np.random.Generator, total: int, count: int) -> np.ndarray:
    """``count`` tracklet lengths ≥ 1 summing to ``total``."""
    cuts = np.sort(rng.choice(np.arange(1, total), count - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def write_index(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "info").mkdir(parents=True)
    query_rows = None
    for subset, size in (("train", TRAIN), ("test", TEST)):
        (root / f"bbox_{subset}").mkdir()
        lengths = _lengths(rng, size["names"], size["tracklets"])
        pids = np.sort(rng.integers(1, 1500, size["tracklets"]))
        if subset == "test":  # a few junk (-1) and distractor (0) tracklets, as in the release
            special = rng.choice(size["tracklets"], 300, replace=False)
            pids[special[:150]] = -1
            pids[special[150:]] = 0
            candidates = np.flatnonzero(pids > 0)
            query_rows = np.sort(rng.choice(candidates, QUERIES, replace=False)) + 1
        cams = rng.integers(1, 7, size["tracklets"])
        names, rows = [], []
        for number, (length, pid, cam) in enumerate(zip(lengths, pids, cams, strict=True), start=1):
            first = len(names) + 1
            frames = rng.permutation(length) + 1 if number % 7 == 0 else range(1, length + 1)
            names.extend(mars_image_name(int(pid), int(cam), number % 10_000, int(f)) for f in frames)
            rows.append([first, len(names), int(pid), int(cam)])
        (root / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
        scipy.io.savemat(root / "info" / f"tracks_{subset}_info.mat", {f"track_{subset}_info": np.array(rows)})
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": query_rows[None]})


def fingerprint(dataset, root: Path) -> str:
    digest = hashlib.sha256()
    prefix = len(str(root))
    for subset in ("train", "query", "gallery"):
        for t in getattr(dataset, subset):
            digest.update(f"{subset} {t.pid} {t.camid}\n".encode())
            digest.update("\n".join(f[prefix:] for f in t.frames).encode())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_index(root)
        wall, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            dataset = read_mars(root, protocol="official")
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        frames = sum(len(t) for t in dataset.train) + sum(len(t) for t in dataset.gallery)
        print(
            f"read_mars: {frames} frames listed; wall best {min(wall):.2f} s, median {statistics.median(wall):.2f} s; "
            f"process CPU best {min(cpu):.2f} s, median {statistics.median(cpu):.2f} s"
        )
        print(f"lists sha256: {fingerprint(dataset, root)}")


if __name__ == "__main__":
    main()
