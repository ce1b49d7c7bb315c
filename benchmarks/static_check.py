"""Static check of every GPU kernel, without a GPU: compile ahead of time for sm_90 and sm_80 and
read registers, spills, shared memory, MMA kind, atomics and the hottest SASS loop.

    python benchmarks/static_check.py                    # CI set, sm_90 + sm_80, prints a table
    python benchmarks/static_check.py --set all --markdown static.md --json static.json
    python benchmarks/static_check.py --root /work/wt/triton   # another checkout's kernels

Triton: the host entry points ``forward(a, b, weight, bias, key_mask, inner, outer)`` and
``backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic)`` of
``fastrel.kernels.global_relation`` run on fake CUDA tensors and every launch they make (every
autotune config) is recorded (benchmarks/static_capture.py) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``. CUDA C++: csrc/*.cu is
compiled with nvcc (-cubin, -Xptxas -v). The model behind the issue-rate bound is in
benchmarks/sass_model.py. Exit status 1 when a kernel fails to compile, overflows shared memory
or emits an atomic stronger than relaxed; spill limits are the test's (tests/test_static_check.py).
Results are cached per compiled kernel under ``--cache`` (keyed by the compiler's own source hash).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timed_case import Case

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastrel" / "static_check"
#: Bump when the analysis changes, so cached rows are recomputed.
ANALYSIS_VERSION = 3
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
SHARED_PER_SM = {90: 228 * 1024, 80: 164 * 1024}


PAPER = Case("paper", 576, 128, 128, 256, 128)  # RGSA at the paper's shape: 576 frames
LARGE = Case("n1024", 8, 1024, 1024, 128, 64)
CLIP = Case("clip", 576, 8, 8, 256, 128, masked=True)  # RGTR: 576 clips of T = 8 frames
WIDE = Case("h512", 64, 128, 128, 512, 256)


@dataclasses.dataclass(frozen=True)
class Call:
    """One forward and one backward host call."""

    shape: Case
    dtype: str
    inner: str = "relu"
    outer: str = "relu"
    masked: bool = False
    deterministic: bool = True

    @property
    def label(self) -> str:
        flags = [self.shape.name, self.dtype, f"{self.inner}/{self.outer}"]
        flags += ["mask"] if self.masked else []
        flags += ["det" if self.deterministic else "atomic"]
        return " ".join(flags)


def _timed(dtypes: tuple[str, ...], shapes: tuple[Case, ...]) -> list[Call]:
    """The shapes gpu_check.sh times, deterministic and with atomics (different kernels)."""
    return [Call(s, d, masked=s.masked, deterministic=det) for s in shapes for d in dtypes for det in (True, False)]


def _code_paths(shape: Case, dtype: str) -> list[Call]:
    """The other inner/outer activations (different specialisations), σ = identity included."""
    pairs = [("leaky_relu", "relu"), ("abs", "leaky_relu"), ("identity", "relu")]
    calls = [Call(shape, dtype, i, o) for i, o in pairs]
    return calls + [Call(shape, dtype, "relu", "identity", masked=m) for m in (False, True)]


#: "ci" (the test): on sm_90 every autotune config of the timed shapes in bf16, fp32 at the clip
#: shape, fp32 through TF32 at the paper shape, and the other code paths at the clip shape; on sm_80
#: the paper shape in bf16. "paper": the paper shape in bf16 only (quick iteration on a kernel).
#: "wide": H = 512, R = 256 in bf16 and TF32 (the R slices' shared-memory budget). "all": every
#: dtype, masks and code path.
SETS = {
    "paper": {arch: _timed(("bf16",), (PAPER,)) for arch in (90, 80)},
    "wide": {arch: _timed(("bf16", "tf32"), (WIDE,)) for arch in (90, 80)},
    "ci": {
        90: _timed(("bf16",), (PAPER, LARGE, CLIP))
        + _timed(("fp32",), (CLIP,))
        + _timed(("tf32",), (PAPER,))
        + [Call(CLIP, "bf16", "abs", "leaky_relu", masked=True), Call(CLIP, "bf16", "relu", "identity", masked=True)],
        80: _timed(("bf16",), (PAPER,)),
    },
    "all": {
        arch: _timed(("bf16", "fp16", "fp32", "tf32"), (PAPER, LARGE, CLIP))
        + [
            Call(s, d, masked=True, deterministic=det)
            for s in (PAPER, LARGE)
            for d in ("bf16", "fp32")
            for det in (True, False)
        ]
        + _code_paths(PAPER, "bf16")
        + _code_paths(CLIP, "fp32")
        for arch in (90, 80)
    },
}


# --------------------------------------------------------------------------------------------
# Triton: capture, compile, analyse (in worker processes, one architecture and shard each)


def _run_call(kernels, call: Call) -> None:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}[call.dtype]
    torch.backends.cuda.matmul.allow_tf32 = call.dtype == "tf32"  # fp32 through TF32 tensor cores
    s = call.shape

    def empty(*size, dt=dtype):
        return torch.empty(*size, dtype=dt, device="cuda")

    a, b, weight, bias = empty(s.B, s.N, s.H), empty(s.B, s.M, s.H), empty(s.R, s.H), empty(s.R)
    key_mask = empty(s.B, s.M, dt=torch.bool) if call.masked else None
    g = kernels.forward(a, b, weight, bias, key_mask, call.inner, call.outer)
    kernels.backward(torch.empty_like(g), a, b, weight, bias, key_mask, call.inner, call.outer, call.deterministic)


def _short(value) -> str:
    text = str(value)
    for long, short in (("triton.language.", ""), ("float", "fp"), ("bfloat16", "bf16")):
        text = text.replace(long, short)
    return text


def _describe(launch) -> tuple[str, str]:
    """(variant: the non-tile constexprs and the pointer dtype, config: tiles, warps, stages and any register cap)."""
    names = list(launch.signature)
    constexprs = {names[path[0]]: value for path, value in launch.constexprs.items() if len(path) == 1}
    tiles = {k: v for k, v in constexprs.items() if k.startswith("BLOCK")}
    io = next((t[1:] for t in launch.signature.values() if t.startswith("*")), "?")
    variant = " ".join([io] + [f"{k}={_short(v)}" for k, v in constexprs.items() if k not in tiles])
    options = launch.options
    config = "x".join(str(v) for v in tiles.values()) + f" w{options['num_warps']} s{options['num_stages']}"
    if options.get("maxnreg"):
        config += f" r{options['maxnreg']}"
    return variant, config


def _analyse_triton(launch, arch: int) -> dict:
    import contextlib
    import io

    import sass_model
    import triton
    from triton.compiler import ASTSource

    src = ASTSource(launch.fn, launch.signature, launch.constexprs, launch.attrs)
    log = io.StringIO()
    knobs = triton.knobs
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(log))
        for scope, name in ((knobs.nvidia, "dump_ptxas_log"), (knobs.compilation, "always_compile")):
            previous = getattr(scope, name)
            setattr(scope, name, True)
            stack.callback(setattr, scope, name, previous)
        compiled = triton.compile(src, target=_target(arch), options=launch.options)
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    resources = next(iter(sass_model.parse_ptxas(log.getvalue()).values()), sass_model.Resources())
    sass = _cuobjdump_sass(cubin)
    functions = sass_model.parse_sass(sass)
    loop = sass_model.hottest_loop(next(iter(functions.values()), []), arch)
    shared = compiled.metadata.shared
    warps = launch.options["num_warps"]
    return dict(
        registers=resources.registers,
        spill_store=resources.spill_store,
        spill_load=resources.spill_load,
        stack=resources.stack,
        shared=shared,
        ctas_per_sm=sass_model.ctas_per_sm(resources.registers or 0, warps, shared, SHARED_PER_SM[arch]),
        mma=sass_model.mma_kind(ptx),
        atomics=sass_model.ptx_atomics(ptx),
        loop=dataclasses.asdict(loop) if loop else None,
        kflop_per_iteration=(loop.flops_per_warp * warps / 1000) if loop else None,
    )


def _target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


def _cuobjdump_sass(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_tool("cuobjdump"), "-sass", f.name], check=True, capture_output=True, text=True).stdout


def _tool(name: str) -> str:
    """Triton's bundled CUDA tool (matches its ptxas), else the toolkit's."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.exists():
        return str(bundled)
    return str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name)


def _cache_key(launch, arch: int) -> str:
    import triton
    from triton.compiler import ASTSource

    src = ASTSource(launch.fn, launch.signature, launch.constexprs, launch.attrs)
    options = json.dumps({k: str(v) for k, v in sorted(launch.options.items())})
    text = f"{ANALYSIS_VERSION}|{triton.__version__}|{arch}|{src.hash()}|{options}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def triton_rows(
    arch: int, calls: list[Call], cache: Path | None, shard: tuple[int, int] = (0, 1)
) -> tuple[list[dict], str]:
    """One row per distinct compiled Triton kernel that ``calls`` launch on sm_<arch>; with
    ``shard`` = (i, n) only the rows i, i + n, ... (their place in ``index``)."""
    import static_capture

    from fastrel.kernels import global_relation as kernels

    rows: dict[str, dict] = {}
    order = []
    for call in calls:
        for launch in static_capture.capture(lambda c=call: _run_call(kernels, c), static_capture.DEVICES[arch]):
            key = launch.key()
            if key not in rows:
                variant, config = _describe(launch)
                rows[key] = dict(arch=arch, source="triton", kernel=launch.kernel, variant=variant, config=config,
                                 grid=list(launch.grid), calls=[], autotune=[], launch=launch)  # fmt: skip
                order.append(key)
            for field, value in (("calls", call.label), ("autotune", launch.config)):
                if value and value not in rows[key][field]:
                    rows[key][field].append(value)
    result = []
    for index, key in enumerate(order):
        if index % shard[1] != shard[0]:
            continue
        row = dict(rows[key], index=index)
        launch = row.pop("launch")
        path = cache / f"triton-{_cache_key(launch, arch)}.json" if cache else None
        if path and path.exists():
            analysis = json.loads(path.read_text())
        else:
            try:
                analysis = _analyse_triton(launch, arch)
            except Exception as error:  # a kernel that does not compile is a finding, reported per row
                analysis = dict(error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
            if path and "error" not in analysis:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(analysis))
        row.update(analysis, shared_limit=SHARED_LIMIT[arch])
        result.append(row)
    return result, kernels.__file__


# --------------------------------------------------------------------------------------------
# CUDA C++: the cubin of csrc/*.cu, from the checkout's built library when it is current, else nvcc

#: nvcc flags as setup.py gives them (with torch's own), plus a cubin for one architecture.
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++20", "-DWITH_CUDA"]


def _cuda_cubins(arch: int, root: Path, cache: Path | None, workdir: Path) -> tuple[list[Path], str, str]:
    """(cubins for sm_<arch>, ptxas -v log or "", where they came from)."""
    sources = sorted((root / "csrc").glob("*.cu"))
    newest = max(p.stat().st_mtime for p in (root / "csrc").iterdir())
    for library in sorted((root / "fastrel").glob("_C*.so")):
        if library.stat().st_mtime < newest:
            continue
        listed = subprocess.run([_tool("cuobjdump"), "-lelf", str(library)], capture_output=True, text=True).stdout
        names = [line.split(":")[-1].strip() for line in listed.splitlines() if f".sm_{arch}." in line]
        if names:
            for name in names:
                subprocess.run(
                    [_tool("cuobjdump"), "-xelf", name, str(library)], cwd=workdir, check=True, capture_output=True
                )
            return [workdir / n for n in names], "", f"built library {library.name}"
    return _nvcc_cubins(arch, root, sources, cache, workdir)


def _nvcc_cubins(arch: int, root: Path, sources: list[Path], cache: Path | None, workdir: Path):
    import sysconfig

    import torch
    from torch.utils import cpp_extension

    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    flags = NVCC_FLAGS + cpp_extension.COMMON_NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    digest = hashlib.sha256(f"{ANALYSIS_VERSION}|{torch.__version__}|{flags}".encode())
    for path in sorted((root / "csrc").iterdir()):
        digest.update(path.read_bytes())
    key = digest.hexdigest()[:32]
    cubins, logs = [], []
    for source in sources:
        cached = cache / f"cuda-{key}-{source.stem}.sm_{arch}.cubin" if cache else None
        if cached and cached.exists():
            cubins.append(cached)
            logs.append(cached.with_suffix(".log").read_text())
            continue
        out = workdir / f"{source.stem}.sm_{arch}.cubin"
        cmd = [
            str(nvcc),
            "-cubin",
            *flags,
            *includes,
            f"-I{root / 'csrc'}",
            "-Xptxas",
            "-v",
            "-o",
            str(out),
            str(source),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {source.name} (sm_{arch}):\n{proc.stderr[-4000:]}")
        cubins.append(out)
        logs.append(proc.stderr)
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(out.read_bytes())
            cached.with_suffix(".log").write_text(proc.stderr)
    return cubins, "\n".join(logs), "nvcc -cubin"


def _demangle(names: list[str]) -> dict[str, tuple[str, str]]:
    """mangled name -> (kernel, template arguments)."""
    text = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    out = {}
    for mangled, plain in zip(names, text):
        plain = plain.split("(")[0].removeprefix("void ").replace("fastrel::cuda_kernels::", "").replace("c10::", "")
        kernel, _, args = plain.partition("<")
        out[mangled] = (kernel, "<" + args if args else "")
    return out


def cuda_rows(arch: int, root: Path, cache: Path | None) -> list[dict]:
    """One row per __global__ function of csrc/*.cu compiled for sm_<arch>."""
    import sass_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cubins, log, origin = _cuda_cubins(arch, root, cache, Path(tmp))
        except Exception as error:
            first = str(error).strip().splitlines()[0][:300]
            return [dict(arch=arch, source="cuda", kernel="csrc/*.cu", variant="", config="", calls=[], error=first)]
        ptxas = sass_model.parse_ptxas(log)
        for cubin in cubins:
            usage = subprocess.run(
                [_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True
            ).stdout
            resources = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage))
            functions = sass_model.parse_sass(_cuobjdump_sass(cubin.read_bytes()))
            names = _demangle(list(functions))
            for name, instructions in functions.items():
                fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", resources.get(name, "")))
                loop = sass_model.hottest_loop(instructions, arch)
                if name in ptxas:
                    spill_store, spill_load = ptxas[name].spill_store, ptxas[name].spill_load
                else:
                    spill_store, spill_load = sass_model.local_bytes(instructions)
                kernel, variant = names[name]
                rows.append(
                    dict(
                        arch=arch,
                        source="cuda",
                        kernel=kernel,
                        variant=variant,
                        config="static smem",
                        calls=[origin],
                        registers=int(fields.get("REG", 0)),
                        spill_store=spill_store,
                        spill_load=spill_load,
                        stack=int(fields.get("STACK", 0)),
                        shared=int(fields.get("SHARED", 0)),
                        shared_limit=SHARED_LIMIT[arch],
                        ctas_per_sm=None,
                        mma=sass_model.sass_mma_kind(instructions),
                        atomics=sass_model.sass_atomics(instructions),
                        loop=dataclasses.asdict(loop) if loop else None,
                        kflop_per_iteration=None,
                    )
                )
    return sorted(rows, key=lambda r: (r["kernel"], r["variant"]))


# --------------------------------------------------------------------------------------------
# Orchestration


def _worker(args: argparse.Namespace) -> None:
    """One architecture, in a fresh process: the kernels are imported for the GPU (no interpreter)."""
    arch = args.worker
    cache = None if args.no_cache else Path(args.cache)
    start = time.time()
    shard = tuple(map(int, args.shard.split("/")))
    rows, source = triton_rows(arch, SETS[args.set][arch], cache, shard)
    if not args.no_cuda and shard[0] == shard[1] - 1:  # the last shard also reads the CUDA kernels
        rows += [dict(row, index=100_000 + i) for i, row in enumerate(cuda_rows(arch, Path.cwd(), cache))]
    out = dict(arch=arch, shard=args.shard, kernels_file=source, rows=rows, seconds=round(time.time() - start, 1))
    Path(args.json).write_text(json.dumps(out))


def run(root: Path, archs: list[int], kernel_set: str, cache: Path | None, jobs: int, cuda: bool = True) -> dict:
    """Run ``jobs`` worker processes per architecture (``jobs`` at a time), each compiling a
    shard of the kernels, and merge their rows."""
    env = dict(os.environ)
    for name in ("TRITON_INTERPRET", "FASTREL_TRITON_AUTOTUNE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:

        def one(task: tuple[int, int]) -> dict:
            arch, shard = task
            out = Path(tmp) / f"sm{arch}-{shard}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(arch), "--shard", f"{shard}/{jobs}"]
            cmd += ["--set", kernel_set, "--json", str(out)]
            cmd += ["--no-cache"] if cache is None else ["--cache", str(cache)]
            cmd += [] if cuda else ["--no-cuda"]
            proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"static check for sm_{arch} failed:\n{proc.stdout}\n{proc.stderr}")
            return json.loads(out.read_text())

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            parts = list(pool.map(one, [(arch, shard) for arch in archs for shard in range(jobs)]))
    rows = sorted((row for p in parts for row in p["rows"]), key=lambda r: (-r["arch"], r["index"]))
    return dict(
        root=str(root),
        set=kernel_set,
        parts=[{k: v for k, v in p.items() if k != "rows"} for p in parts],
        rows=rows,
    )


def _name(row: dict) -> str:
    return f"sm_{row['arch']} {row['kernel']} {row['variant']} {row['config']}"


def violations(row: dict) -> list[str]:
    """The hard failures of one row: no compile, shared memory over the limit, a non-relaxed atomic."""
    if "error" in row:
        return [f"does not compile: {row['error']}"]
    found = []
    if row["shared"] > row["shared_limit"]:
        found.append(f"shared memory {row['shared']} B > {row['shared_limit']} B")
    strong = {sem: n for sem, n in row["atomics"].items() if sem != "relaxed"}
    if strong:
        found.append(f"atomics stronger than relaxed: {strong}")
    return found


# --------------------------------------------------------------------------------------------
# Report

COLUMNS = ("arch", "kernel", "variant", "config", "regs", "spill B (st/ld)", "smem KB / limit", "CTA/SM", "MMA",
           "atomics", "loop instr", "TC instr", "loop spill ops", "loop barriers", "kFLOP/iter", "issue bound",
           "used by")  # fmt: skip


def _cells(row: dict) -> list[str]:
    head = [f"sm_{row['arch']}", row["kernel"], row["variant"], row["config"]]
    if "error" in row:
        return head + ["**does not compile**: " + row["error"]] + [""] * (len(COLUMNS) - 6) + ["; ".join(row["calls"])]
    loop = row["loop"] or {}
    atomics = ", ".join(f"{n} {sem}" for sem, n in sorted(row["atomics"].items())) or "-"
    bound = loop.get("issue_bound")
    return head + [
        str(row["registers"]),
        f"{row['spill_store']}/{row['spill_load']}",
        f"{row['shared'] / 1024:.1f} / {row['shared_limit'] // 1024}",
        "-" if row["ctas_per_sm"] is None else str(row["ctas_per_sm"]),
        row["mma"],
        atomics,
        str(loop.get("instructions", "-")),
        f"{loop['math']} {loop['math_kind']}" if loop else "-",
        str(loop.get("local", "-")),
        str(loop.get("barriers", "-")),
        f"{row['kflop_per_iteration']:.0f}" if row.get("kflop_per_iteration") else "-",
        f"{bound:.0%}" if bound is not None else "-",
        "; ".join(row["calls"][:3]) + (f" (+{len(row['calls']) - 3})" if len(row["calls"]) > 3 else ""),
    ]


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def text_table(result: dict) -> str:
    cells = [list(COLUMNS)] + [_cells(row) for row in result["rows"]]
    cells = [[c[:60] for c in row] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="checkout whose kernels are checked")
    parser.add_argument("--set", choices=sorted(SETS), default="ci")
    parser.add_argument("--arch", type=int, nargs="+", choices=(90, 80), default=[90, 80])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--no-cuda", action="store_true", help="Triton kernels only")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes at once")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    start = time.time()
    cache = None if args.no_cache else args.cache
    result = run(args.root.resolve(), args.arch, args.set, cache, args.jobs, not args.no_cuda)
    result["seconds"] = round(time.time() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(result))
    print(text_table(result))
    failures = [f"{_name(r)}: {v}" for r in result["rows"] for v in violations(r)]
    for part in result["parts"]:
        print(f"sm_{part['arch']} shard {part['shard']}: {part['kernels_file']} ({part['seconds']} s)")
    print("\n".join(failures) if failures else "no violations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
