"""``python benchmarks/demo.py``: RGSA and RGTR through every usable CPU backend, checked against the reference.

Each backend runs the same modules (same parameters) on the same random inputs, forward and
backward, in a fresh process of its own. Outputs and parameter gradients are compared with the
``reference`` backend's in float64, allowing twice the float32 reference's own error; time and
peak memory are shown beside the reference's. The exit status is 1 when any backend disagrees.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measure
import torch

from fastrel import backends
from fastrel.modules import RGSA, RGTR

#: Activation pairs tried in order; a backend runs the first one it accepts.
ACTIVATIONS = (("relu", "relu"), ("relu", "identity"), ("abs", "identity"), ("identity", "identity"))
#: Relative error always allowed in float32, whatever the reference's own error happens to be.
FLOOR = 1e-5
#: A tensor whose float64 value is below this fraction of its module's largest is zero in exact
#: arithmetic (a bias before BatchNorm); its error floor is set by the module's scale, not its own.
VANISHING = 1e-8
CRITERION_NOTE = (
    "max error: largest |x − x64| over the outputs and every parameter gradient, x64 from the reference\n"
    "in float64. A backend agrees when every error is at most 2× the float32 reference's own error\n"
    "+ 1e-5·max|x64| (the FlashAttention criterion; /allowed ≤ 1). Gradients that vanish analytically\n"
    "(a bias before BatchNorm: max|x64| < 1e-8 of the module's largest value S) get 1e-5·S instead."
)
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


def _run_backend(backend: str, inner: str, outer: str, dtype: torch.dtype, quick: bool, out_path: str) -> dict:
    """Forward + backward of RGSA and RGTR; saves results to ``out_path``, returns time and memory."""
    size = _sizes(quick)
    torch.manual_seed(0)
    C = size["channels"]
    rgsa = RGSA(C, inner=inner, outer=outer, backend=backend).to(dtype)
    rgtr = RGTR(C, inner=inner, outer=outer, backend=backend).to(dtype)
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(size["frames"], C, size["height"], size["width"], generator=generator).to(dtype)
    clips = torch.randn(size["clips"], size["length"], C, generator=generator).to(dtype)
    lengths = torch.randint(1, size["length"] + 1, (size["clips"],), generator=generator)
    lengths[0] = size["length"]
    probe_frame = torch.randn(size["frames"], C, generator=generator).to(dtype)
    probe_clip = torch.randn(size["clips"], C, generator=generator).to(dtype)
    modules = {"RGSA": rgsa, "RGTR": rgtr}

    def step() -> dict:
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        feature, attention = rgsa(maps, return_attention=True)
        clip, refined = rgtr(clips, lengths=lengths)
        loss = (feature * probe_frame).sum() + (clip * probe_clip).sum()
        loss.backward()
        return {"RGSA feature": feature, "RGSA attention": attention, "RGTR clip": clip, "RGTR refined": refined}

    step()  # warm-up
    peak = measure.cpu_peak_bytes(step)
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


def _spawn(backend: str, activations: tuple[str, str], dtype: str, options: list[str], folder: Path):
    """Run one backend in a fresh process: (time and memory, outputs and gradients)."""
    path = folder / f"{backend}_{activations[0]}_{activations[1]}_{dtype}.pt"
    command = [sys.executable, __file__, "--worker", backend, *activations, path.as_posix()]
    done = subprocess.run([*command, "--dtype", dtype, *options], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"backend {backend!r} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(path)


def _check(results: dict, single: dict, exact: dict) -> tuple[float, float, str]:
    """Largest error against the float64 reference, and the largest ratio of an error to what is
    allowed for it, with the name of that tensor (see CRITERION_NOTE)."""
    scale = {
        module: max(t.abs().max().item() for name, t in exact.items() if name.startswith(module))
        for module in {name.split()[0] for name in exact}
    }
    worst_error, worst_ratio, where = 0.0, 0.0, ""
    for name, truth in exact.items():
        error = (results[name].double() - truth).abs().max().item()
        size = truth.abs().max().item()
        module_scale = scale[name.split()[0]]
        own = (single[name].double() - truth).abs().max().item()
        allowed = 2 * own + FLOOR * (module_scale if size <= VANISHING * module_scale else size)
        ratio = error / allowed if allowed > 0 else (0.0 if error == 0 else float("inf"))
        worst_error = max(worst_error, error)
        if ratio >= worst_ratio:
            worst_ratio, where = ratio, name
    return worst_error, worst_ratio, where


def demo(quick: bool = False, threads: int | None = None) -> int:
    size = _sizes(quick)
    threads = threads or torch.get_num_threads()
    options = (["--quick"] if quick else []) + ["--threads", str(threads)]
    print(
        f"RGSA: {size['frames']} frames, C = {size['channels']}, {size['height']}×{size['width']} map "
        f"(N = {size['height'] * size['width']}); RGTR: {size['clips']} clips of up to {size['length']} "
        f"frames (ragged); hidden C/8, relation C/16; float32, forward + backward, {threads} threads"
    )
    runs = []
    for name, reason, activations in _candidates():
        if name == "reference":
            continue
        if reason:
            print(f"  {name:10s} skipped: {reason}")
        else:
            runs.append((name, activations))
    failures = 0
    references: dict[tuple[str, str], tuple[dict, dict, dict]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, activations in runs:
            if activations not in references:
                measured, single = _spawn("reference", activations, "float32", options, folder)
                _, exact = _spawn("reference", activations, "float64", options, folder)
                references[activations] = (measured, single, exact)
            try:
                measured, results = _spawn(name, activations, "float32", options, folder)
            except RuntimeError as error:
                print(error)
                failures += 1
                continue
            _, single, exact = references[activations]
            rows.append((name, activations, measured, _check(results, single, exact)))
    print(
        f"\n{'backend':10s} {'inner/outer':16s} {'ms':>8s} {'ref ms':>8s} {'MiB':>7s} {'ref MiB':>7s} "
        f"{'max error':>10s} {'/allowed':>8s}  worst at"
    )
    for activations, (measured, _, _) in references.items():
        line = f"{'reference':10s} {'/'.join(activations):16s} {measured['ms']:8.1f} {'':8s}"
        print(f"{line} {measured['peak_mib']:7.1f}")
    for name, activations, measured, (error, ratio, where) in rows:
        ref = references[activations][0]
        verdict = "ok" if ratio <= 1 else "DISAGREES"
        failures += ratio > 1
        print(
            f"{name:10s} {'/'.join(activations):16s} {measured['ms']:8.1f} {ref['ms']:8.1f} "
            f"{measured['peak_mib']:7.1f} {ref['peak_mib']:7.1f} {error:10.2e} {ratio:8.2f}  {where}  {verdict}"
        )
    if not rows:
        print("no fused CPU backend is usable here (the reasons are above)")
    print("\n" + CRITERION_NOTE + "\n" + MEMORY_NOTE)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "INNER", "OUTER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        backend, inner, outer, path = args.worker
        dtype = getattr(torch, args.dtype)
        print(json.dumps(_run_backend(backend, inner, outer, dtype, args.quick, path)))
        return 0
    return demo(args.quick, args.threads)


if __name__ == "__main__":
    sys.exit(main())
