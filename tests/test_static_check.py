"""The static kernel check in CI (benchmarks/static_check.py, no GPU needed): every Triton launch
the host code makes, every autotune config of the timed shapes, and every CUDA C++ kernel compile
for sm_90 and sm_80, fit the target's shared memory, use only relaxed atomics and spill no more
than declared here. A cold run costs about 165 s of CPU (cpu-2c) when the CUDA kernels come from
the built library (CI builds them), 335 s when nvcc must compile csrc/ too; results are cached per
compiled kernel, keyed by the compiler's own source hash."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sass_model  # noqa: E402
import static_check  # noqa: E402

#: Spill bytes per thread (stores or loads, the larger) a launch may have, by (arch, kernel, dtype,
#: config) as Triton 3.8 compiles it; a launch not listed may not spill. Each listed launch was
#: measured on an H200 faster than the spill-free one it replaced (benchmarks/RESULTS.md, "Launch
#: sweep", "Second H200 run"), or is TF32's or sm_80's compilation of such a tile (not timed):
#: - all of R = 128 per backward program (1.85x at the paper shape): 4x16 with 8 warps; it fell
#:   from 436 B to 48 B when the row kernel's key loop stopped hoisting loop invariants (KEEP_IN_LOOP),
#:   and to 16 B when the kernel was told the sizes are positive and R is one slice (ONE_SLICE);
#: - the forward's 4x16/4-warp tile at the paper shape (17% faster than 8x16/8-warp) spills no more
#:   in bf16 (928, 164, 4, now 0 B); on sm_80, with R slices of 64 (launch.R_SLICE_SM80), it and
#:   8x16/8 are spill-free, and at the paper shape autotuning leaves out the 8x16/4-warp tile
#:   (N = 1024's fastest on the H200), which spilled 192 B there, reloaded every step
#:   (launch.prune_forward: its pair tile);
#: - the backward's 4x16/4-warp tile, the autotune candidate for N = 1024 sets (2.8x the 8-warp tile
#:   there: 52 B in fast mode, 60 B in deterministic mode, which runs it there, 10% faster than the
#:   2x32 tile); at the paper shape autotuning leaves it out (launch.prune_backward: 3.1 KB of
#:   spills, 3.8x slower), and with TF32 operands at both shapes (its pair tile: 1.6 KB at the paper
#:   shape);
#: - the forward's paper tiles in TF32, which form the pair tile in parts of H (launch.h_parts): 16-20 B
#:   outside the loop (856 and 728 B, reloaded every step, formed whole);
#: - sm_80's backward with R slices of 32 in bf16/fp16 (launch.R_SLICE_SM80: twice the
#:   tensor-core share of the loop of slices of 16, which were spill-free), 8-16 B outside the loop;
#: - an RGTR clip's IEEE fp32 forward with R = 64 (8x8/8-warp, one step, register limit stated:
#:   launch.FMA_FORWARD_REGISTERS): 1.8x faster kernels than the spill-free R = 16 (timed at 1.9 KB;
#:   reading the key mask as bytes took it to 3.6 KB, selecting by key only, not by row, to 0.8 KB).
ALLOWED_SPILL_BYTES: dict[tuple[int, str, str, str], int] = {
    (90, "_forward_kernel", "fp32", "4x16x256x128 w4 s2"): 20,
    (90, "_forward_kernel", "fp32", "8x16x256x128 w8 s2"): 16,
    (90, "_forward_kernel", "fp32", "8x8x256x64 w8 s2 r255"): 644,
    (90, "backward_rows_kernel", "bf16", "4x16x256x128 w8 s1"): 16,
    (90, "backward_rows_kernel", "bf16", "4x16x128x64 w4 s1"): 60,
    (90, "backward_rows_kernel", "fp32", "4x16x256x32 w8 s1"): 40,
    (80, "backward_rows_kernel", "bf16", "16x2x256x32 w8 s2"): 16,
}
#: Of those, the launches whose hottest loop may also load or store spilled values (LDL/STL in its
#: SASS body, reloaded every step); the others spill outside it, once per work item or program.
#: Not here: any tensor-core launch, on sm_90 or sm_80.
SPILLS_IN_LOOP: set[tuple[int, str, str, str]] = {
    (90, "_forward_kernel", "fp32", "8x8x256x64 w8 s2 r255"),
}
ARCHS = (90, 80)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    result = static_check.run(ROOT, list(ARCHS), "ci", static_check.DEFAULT_CACHE, jobs=2)
    for part in result["parts"]:
        assert Path(part["kernels_file"]).resolve().is_relative_to(ROOT), part  # this checkout's kernels
    return result["rows"]


def _names(bad: list[dict]) -> str:
    return "\n".join(f"{static_check._name(r)}: {static_check.violations(r) or r}" for r in bad[:20])


def test_every_kernel_compiles_for_sm90_and_sm80(rows):
    failed = [r for r in rows if "error" in r]
    assert not failed, _names(failed)
    for arch in ARCHS:
        sources = {r["source"] for r in rows if r["arch"] == arch}
        assert sources == {"triton", "cuda"}, f"sm_{arch}: compiled only {sources}"


def test_every_autotune_config_of_the_timed_shapes_is_compiled_for_sm90(rows):
    """Each autotuned launch compiles every config its tuner keeps ("i/n": config i of the n left
    after the tuner's pruning, which may keep a different number per shape)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if r["arch"] == 90 and r["source"] == "triton":
            seen.setdefault((r["kernel"], r["variant"]), set()).update(r["autotune"])
    tuned = {k: tags for k, tags in seen.items() if tags}
    assert tuned, "no autotuned launch was captured"
    for (kernel, variant), tags in tuned.items():
        for n in {int(tag.split("/")[1]) for tag in tags}:
            kept = {tag for tag in tags if tag.endswith(f"/{n}")}
            assert kept == {f"{i}/{n}" for i in range(1, n + 1)}, f"{kernel} {variant}: compiled configs {sorted(tags)}"


def test_shared_memory_fits_each_target(rows):
    over = [r for r in rows if "error" not in r and r["shared"] > r["shared_limit"]]
    assert not over, _names(over)


def test_atomics_are_relaxed(rows):
    """A sum needs no ordering: acq_rel atomics cost a fence each."""
    strong = [r for r in rows if "error" not in r and set(r["atomics"]) - {"relaxed"}]
    assert not strong, _names(strong)


def _key(row: dict) -> tuple[int, str, str, str]:
    """(arch, kernel, dtype, config) of a row: the key of ALLOWED_SPILL_BYTES and SPILLS_IN_LOOP."""
    return row["arch"], row["kernel"], row["variant"].split()[0], row["config"]


def _allowed_spill(row: dict) -> int:
    return ALLOWED_SPILL_BYTES.get(_key(row), 0)


def test_spills_within_declared_limits(rows):
    over = [r for r in rows if "error" not in r and max(r["spill_store"], r["spill_load"]) > _allowed_spill(r)]
    assert not over, "\n".join(
        f"{static_check._name(r)}: spills {r['spill_store']}/{r['spill_load']} B, allowed {_allowed_spill(r)}"
        for r in over[:20]
    )


def test_spilled_values_stay_out_of_the_hottest_loop_unless_declared(rows):
    inside = [
        r
        for r in rows
        if "error" not in r and (r["loop"] or {}).get("local") and _key(r) not in SPILLS_IN_LOOP
    ]
    assert not inside, "\n".join(f"{static_check._name(r)}: {r['loop']['local']} spill ops in the loop" for r in inside)


# The model on hand-made listings: what each reading of a compiled kernel means.


def _listing(filler: int, inside: tuple[str, ...] = ()) -> str:
    """A loop: HGMMA, ``filler`` integer adds, ``inside``, HGMMA, compare, branch back; a spill store
    before it."""
    body = ["HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24"] + ["IADD3 R2, R2, 0x1, RZ"] * filler + list(inside)
    body += ["HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24", "ISETP.GE.AND P0, PT, R2, R3, PT", "@!P0 BRA 0x10"]
    lines = ["Function : demo", "/*0000*/ STL [R1], R4 ;"]
    lines += [f"/*{16 * (i + 1):04x}*/ {text} ;" for i, text in enumerate(body)]
    return "\n".join(lines + [f"/*{16 * (len(body) + 1):04x}*/ EXIT ;"])


def test_issue_bound_counts_warpgroup_mma_per_warp():
    loop = sass_model.hottest_loop(sass_model.parse_sass(_listing(62))["demo"], 90)
    # 66 instructions; 2 HGMMA 64x64x16 contribute 2 * 2*64*64*16 / 4 FLOP per warp; 4 issue slots
    # per SM per cycle against 4096 bf16 FLOP per SM per cycle.
    assert (loop.instructions, loop.math, loop.math_kind) == (66, 2, "HGMMA")
    assert loop.issue_bound == pytest.approx(4 * (2 * 2 * 64 * 64 * 16 / 4) / 66 / 4096)
    short = sass_model.hottest_loop(sass_model.parse_sass(_listing(0))["demo"], 90)
    assert short.issue_bound == 1.0  # capped at the tensor-core peak


def test_spill_ops_are_counted_inside_the_loop_only():
    assert sass_model.hottest_loop(sass_model.parse_sass(_listing(4))["demo"], 90).local == 0
    spilling = _listing(4, ("LDL R5, [R1+0x4]", "STL [R1+0x8], R6", "LDL.LU R7, [R1]"))
    assert sass_model.hottest_loop(sass_model.parse_sass(spilling)["demo"], 90).local == 3


def test_barriers_are_counted_inside_the_loop_only():
    outside = "/*0000*/ BAR.SYNC.DEFER_BLOCKING 0x0 ;"
    plain = _listing(4).replace("/*0000*/ STL [R1], R4 ;", outside)
    assert sass_model.hottest_loop(sass_model.parse_sass(plain)["demo"], 90).barriers == 0
    fenced = _listing(4, ("BAR.SYNC.DEFER_BLOCKING 0x0", "STS [R2], R5", "BAR.SYNC.DEFER_BLOCKING 0x0"))
    fenced = fenced.replace("/*0000*/ STL [R1], R4 ;", outside)
    assert sass_model.hottest_loop(sass_model.parse_sass(fenced)["demo"], 90).barriers == 2


def test_ptx_atomics_default_to_relaxed_and_name_their_ordering():
    ptx = """
    atom.global.gpu.acq_rel.add.f32 %f1, [%rd1], %f2;
    @%p1 red.global.gpu.relaxed.add.f32 [%rd2], %f3;
    red.global.add.f32 [%rd3], %f4;
    """
    assert sass_model.ptx_atomics(ptx) == {"acq_rel": 1, "relaxed": 2}


def test_ptxas_log_gives_registers_and_spills_per_function():
    log = """ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
    240 bytes stack frame, 264 bytes spill stores, 260 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 240 bytes cumulative stack size, 1024 bytes smem"""
    k = sass_model.parse_ptxas(log)["k"]
    assert (k.registers, k.spill_store, k.spill_load, k.stack, k.static_shared) == (255, 264, 260, 240, 1024)
