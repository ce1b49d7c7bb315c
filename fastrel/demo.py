"""``python -m fastrel.demo``: RGSA and RGTR through every usable CPU backend, checked against the reference.

Each backend runs the same modules (same parameters) on the same random inputs, forward and
backward, in a fresh process of its own. Outputs and parameter gradients are compared with the
``reference`` backend's; time and peak memory are shown beside the reference's. The exit status
is 1 when any backend disagrees beyond tolerance.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastrel import backends
from fastrel.modules import RGSA, RGTR

#: Largest accepted max|x − x_ref| / max|x_ref| over each output and each parameter gradient (float32).
TOLERANCE = 1e-4
#: Activation pairs tried in order; a backend runs the first one it accepts.
ACTIVATIONS = (("relu", "relu"), ("relu", "identity"), ("abs", "identity"), ("identity", "identity"))
MEMORY_NOTE = (
    "peak memory: growth of the process's peak resident set (VmHWM) during one forward+backward step,\n"
    "measured in a fresh process per backend after warm-up, with freed heap returned to the OS first;\n"
    "it counts every allocation (torch's allocator, the kernels' buffers), not only tensors."
)


def _sizes(quick: bool) -> dict:
    """RGSA on 16×8 feature maps (N = 128 positions, as at 256×128 input), RGTR on ragged clips."""
    if quick:
        return {"frames": 2, "channels": 128, "height": 8, "width": 8, "clips": 4, "length": 16}
    return {"frames": 4, "channels": 256, "height": 16, "width": 8, "clips": 8, "length": 32}


# ----------------------------------------------------------------------------------------------
# One backend, in its own process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _peak_bytes(step) -> int:
    """Growth of the peak RSS during ``step()``, after returning freed heap memory to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    step()
    return max(_status_kib("VmHWM") - baseline, 0) * 1024


def _run_backend(backend: str, inner: str, outer: str, quick: bool, out_path: str) -> dict:
    """Forward + backward of RGSA and RGTR; saves results to ``out_path``, returns time and memory."""
    size = _sizes(quick)
    torch.manual_seed(0)
    C = size["channels"]
    rgsa = RGSA(C, inner=inner, outer=outer, backend=backend)
    rgtr = RGTR(C, inner=inner, outer=outer, backend=backend)
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(size["frames"], C, size["height"], size["width"], generator=generator)
    clips = torch.randn(size["clips"], size["length"], C, generator=generator)
    lengths = torch.randint(1, size["length"] + 1, (size["clips"],), generator=generator)
    lengths[0] = size["length"]
    probe_frame = torch.randn(size["frames"], C, generator=generator)
    probe_clip = torch.randn(size["clips"], C, generator=generator)
    modules = {"RGSA": rgsa, "RGTR": rgtr}

    def step() -> dict:
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        feature, attention = rgsa(maps, return_attention=True)
        clip, refined = rgtr(clips, lengths=lengths)
        loss = (feature * probe_frame).sum() + (clip * probe_clip).sum()
        loss.backward()
        return {
            "RGSA feature": feature,
            "RGSA attention": attention,
            "RGTR clip": clip,
            "RGTR refined": refined,
        }

    step()  # warm-up
    peak = _peak_bytes(step)
    seconds = []
    for _ in range(5):
        begin = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - begin)
    results = {name: value.detach() for name, value in step().items()}
    for module_name, module in modules.items():
        for name, parameter in module.named_parameters():
            results[f"{module_name} d{name}"] = parameter.grad
    torch.save(results, out_path)
    return {"ms": statistics.median(seconds) * 1e3, "peak_mib": peak / 2**20}


# ----------------------------------------------------------------------------------------------
# The demonstration


def _candidates() -> list[tuple[str, str | None, tuple[str, str] | None]]:
    """(backend, why it is skipped or None, activations it runs) for every registered backend."""
    found = []
    for name, backend in backends.BACKENDS.items():
        if backend.unavailable is not None:
            found.append((name, backend.unavailable, None))
        elif "cpu" not in backend.devices:
            found.append((name, f"runs on {list(backend.devices)}, not on CPU tensors", None))
        elif name == "triton":
            found.append((name, "on CPU Triton runs only through its interpreter (see the tests)", None))
        else:
            accepted = [p for p in ACTIVATIONS if backend.refusal("cpu", torch.float32, *p, False) is None]
            if accepted:
                found.append((name, None, accepted[0]))
            else:
                found.append((name, f"accepts none of the activation pairs {list(ACTIVATIONS)}", None))
    return found


def _spawn(backend: str, activations: tuple[str, str], options: list[str], folder: Path) -> tuple[dict, dict]:
    path = folder / f"{backend}_{activations[0]}_{activations[1]}.pt"
    command = [sys.executable, "-m", "fastrel.demo", "--worker", backend, *activations, str(path), *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"backend {backend!r} failed:\n{done.stderr.strip()}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured, torch.load(path)


def _errors(results: dict, expected: dict) -> tuple[float, float, str]:
    """Largest absolute error, largest relative error (to max|expected|) and where it occurs."""
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    for name, value in expected.items():
        diff = (results[name].double() - value.double()).abs().max().item()
        rel = diff / max(value.abs().max().item(), 1e-30)
        worst_abs = max(worst_abs, diff)
        if rel >= worst_rel:
            worst_rel, where = rel, name
    return worst_abs, worst_rel, where


def demo(quick: bool = False, threads: int | None = None) -> int:
    size = _sizes(quick)
    threads = threads or torch.get_num_threads()
    options = (["--quick"] if quick else []) + ["--threads", str(threads)]
    print(
        f"RGSA: {size['frames']} frames, C = {size['channels']}, {size['height']}×{size['width']} map "
        f"(N = {size['height'] * size['width']}); RGTR: {size['clips']} clips of up to {size['length']} "
        f"frames (ragged); hidden C/8, relation C/16; float32, forward + backward, "
        f"{threads} threads"
    )
    runs, skipped = [], []
    for name, reason, activations in _candidates():
        if name == "reference":
            continue
        (skipped if reason else runs).append((name, reason or activations))
    for name, reason in skipped:
        print(f"  {name:10s} skipped: {reason}")
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        references: dict[tuple[str, str], tuple[dict, dict]] = {}
        rows = []
        for name, activations in runs:
            if activations not in references:
                references[activations] = _spawn("reference", activations, options, Path(folder))
            try:
                measured, results = _spawn(name, activations, options, Path(folder))
            except RuntimeError as error:
                print(error)
                failures += 1
                continue
            rows.append((name, activations, measured, _errors(results, references[activations][1])))
    print(
        f"\n{'backend':10s} {'inner/outer':18s} {'ms':>8s} {'ref ms':>8s} {'MiB':>8s} {'ref MiB':>8s} "
        f"{'max abs err':>11s} {'max rel err':>11s}  worst at"
    )
    for activations, (measured, _) in references.items():
        print(
            f"{'reference':10s} {'/'.join(activations):18s} {measured['ms']:8.1f} {'':8s} {measured['peak_mib']:8.1f}"
        )
    for name, activations, measured, (worst_abs, worst_rel, where) in rows:
        ref = references[activations][0]
        verdict = "ok" if worst_rel <= TOLERANCE else f"DISAGREES (tolerance {TOLERANCE:.0e})"
        failures += worst_rel > TOLERANCE
        print(
            f"{name:10s} {'/'.join(activations):18s} {measured['ms']:8.1f} {ref['ms']:8.1f} "
            f"{measured['peak_mib']:8.1f} {ref['peak_mib']:8.1f} {worst_abs:11.2e} {worst_rel:11.2e}  "
            f"{where}  {verdict}"
        )
    if not rows:
        print("no fused CPU backend is usable here (the reasons are above)")
    print("\n" + MEMORY_NOTE)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrel.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "INNER", "OUTER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        backend, inner, outer, path = args.worker
        print(json.dumps(_run_backend(backend, inner, outer, args.quick, path)))
        return 0
    return demo(args.quick, args.threads)


if __name__ == "__main__":
    sys.exit(main())
