"""Read a compiled kernel without running it: ptxas's resource report, PTX atomics and MMA kind,
the hottest SASS loop and the issue-rate bound it implies.

Issue-rate model (an estimate, never a measurement). An SM has 4 sub-partitions, each issuing at
most one warp instruction per cycle. One iteration of the hottest loop costs every warp of a CTA
``I`` issue slots (``I`` = SASS instructions in the loop body, assuming no divergence and no
replays), so an SM needs at least ``W·I/4`` cycles for a CTA of ``W`` warps, whatever the number of
resident CTAs. In that time the CTA does ``W·F`` FLOPs, ``F`` = FLOPs its tensor-core (or FFMA)
instructions contribute per warp: HMMA.mnk = 2mnk per warp; HGMMA.mxnxk is issued by each of the
4 warps of a warpgroup, so 2mnk/4 per warp; FFMA = 64. Bound = min(1, 4F/I / P), with P the
dense peak per SM per cycle of that instruction class. Latency, memory and barriers come on top;
the loop's barriers are counted, as each one holds every warp of the CTA to the slowest.
"""

from __future__ import annotations

import dataclasses
import re

#: Dense peak FLOP per SM per cycle. sm_90 = H100 SXM (989 TFLOP/s bf16 = 132 SMs x 1.83 GHz x 4096),
#: sm_80 = A100 SXM (312 TFLOP/s bf16 = 108 SMs x 1.41 GHz x 2048).
PEAK_PER_SM_CYCLE = {
    90: {"bf16": 4096, "f16": 4096, "tf32": 2048, "ffma": 256, "dfma": 128},
    80: {"bf16": 2048, "f16": 2048, "tf32": 1024, "ffma": 128, "dfma": 64},
}
SUB_PARTITIONS = 4
MMA_OPCODES = ("HGMMA", "HMMA")


@dataclasses.dataclass
class Resources:
    registers: int | None = None
    spill_store: int = 0
    spill_load: int = 0
    stack: int = 0
    static_shared: int = 0


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Per function (mangled name) resources from a `ptxas -v` log."""
    out: dict[str, Resources] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            current = out.setdefault(m.group(1), Resources())
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack, current.spill_store, current.spill_load = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.registers = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current.static_shared = int(s.group(1)) if s else 0
    return out


def mma_kind(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma.sync"
    return "none"


_SEMANTICS = ("relaxed", "acquire", "release", "acq_rel", "sc")


def sass_atomics(instructions: list[Instruction]) -> dict[str, int]:
    """Count of SASS atomics (ATOM*, RED*): "fenced" when a MEMBAR/FENCE precedes one within 4
    instructions (how an acquire/release atomic compiles), else "relaxed"."""
    counts: dict[str, int] = {}
    for i, ins in enumerate(instructions):
        if ins.opcode.startswith(("ATOM", "RED")):
            fenced = any(p.opcode.startswith(("MEMBAR", "FENCE")) for p in instructions[max(0, i - 4) : i])
            sem = "fenced" if fenced else "relaxed"
            counts[sem] = counts.get(sem, 0) + 1
    return counts


def sass_mma_kind(instructions: list[Instruction]) -> str:
    opcodes = {i.opcode.split(".")[0] for i in instructions}
    return "wgmma" if "HGMMA" in opcodes else ("mma.sync" if "HMMA" in opcodes else "none")


def local_bytes(instructions: list[Instruction]) -> tuple[int, int]:
    """(bytes stored, bytes loaded) by STL / LDL instructions: ptxas's spill figures when the
    kernel keeps no arrays in local memory."""
    totals = {"STL": 0, "LDL": 0}
    for ins in instructions:
        base = ins.opcode.split(".")[0]
        if base in totals:
            width = re.search(r"\.(64|128)\b", ins.opcode)
            totals[base] += int(width.group(1)) // 8 if width else 4
    return totals["STL"], totals["LDL"]


def ptx_atomics(ptx: str) -> dict[str, int]:
    """Count of atom/red instructions per memory ordering (PTX: no .sem qualifier means relaxed)."""
    counts: dict[str, int] = {}
    for m in re.finditer(r"^\s*(?:@!?%\w+\s+)?(atom|red)((?:\.[\w:]+)+)", ptx, re.M):
        parts = m.group(2).split(".")
        sem = next((p for p in parts if p in _SEMANTICS), "relaxed")
        counts[sem] = counts.get(sem, 0) + 1
    return counts


@dataclasses.dataclass
class Instruction:
    address: int
    opcode: str
    text: str
    target: int | None  # branch target address


def parse_sass(sass: str) -> dict[str, list[Instruction]]:
    """Instructions per function of a `cuobjdump -sass` listing (labels resolved to addresses)."""
    functions: dict[str, list[tuple[int, str]]] = {}
    labels: dict[str, dict[str, int]] = {}
    current = None
    pending: list[str] = []
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            functions[current], labels[current], pending = [], {}, []
            continue
        if current is None:
            continue
        m = re.match(r"\s*(\.L_\w+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);", line)
        if m:
            address = int(m.group(1), 16)
            for label in pending:
                labels[current][label] = address
            pending = []
            functions[current].append((address, m.group(2).strip()))
    result = {}
    for name, rows in functions.items():
        instructions = []
        for address, text in rows:
            body = re.sub(r"^@!?U?P\w+\s+", "", text)
            opcode = body.split()[0] if body else ""
            target = None
            if opcode.startswith("BRA"):
                t = re.search(r"`\((\.L_\w+)\)", body)
                if t:
                    target = labels[name].get(t.group(1))
                else:
                    t = re.search(r"0x([0-9a-f]+)", body)
                    target = int(t.group(1), 16) if t else None
            instructions.append(Instruction(address, opcode, text, target))
        result[name] = instructions
    return result


def _flops_per_warp(opcode: str) -> tuple[float, str] | None:
    """(FLOPs one warp's issue of ``opcode`` contributes, peak class) or None for non-math."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)\.\w+\.(\w+)", opcode)
    if m:
        mm, n, k = map(int, m.groups()[:3])
        return 2 * mm * n * k / 4, _mma_class(m.group(4))
    m = re.match(r"HMMA\.(\d+)\.\w+(?:\.(\w+))?", opcode)
    if m:
        digits = m.group(1)  # 16816 = m16 n8 k16, 1688 = m16 n8 k8, 1684 = m16 n8 k4
        mm, n, k = 16, 8, int(digits[3:])
        return 2 * mm * n * k, _mma_class(m.group(2) or "f16")
    base = opcode.split(".")[0]
    if base in ("FFMA", "DFMA"):
        return 64.0, base.lower()
    return None


def _mma_class(operand: str) -> str:
    operand = operand.lower()
    return "tf32" if "tf32" in operand else ("bf16" if "bf16" in operand else "f16")


@dataclasses.dataclass
class LoopReport:
    instructions: int
    math: int  # tensor-core (or FFMA) instructions in the body
    math_kind: str  # "HGMMA", "HMMA", "FFMA" or "-"
    flops_per_warp: float
    issue_bound: float | None  # share of the dense peak of that instruction class
    local: int = 0  # spill traffic in the body: LDL and STL instructions
    barriers: int = 0  # BAR instructions in the body: each holds every warp of the CTA to the slowest


def hottest_loop(instructions: list[Instruction], arch: int) -> LoopReport | None:
    """The innermost loop holding tensor-core instructions, else the innermost one holding
    FFMA/DFMA, else the innermost loop; None for straight-line code."""
    loops = []
    for ins in instructions:
        if ins.target is not None and ins.target <= ins.address:
            body = [i for i in instructions if ins.target <= i.address <= ins.address]
            if len(body) > 1:
                loops.append(body)
    if not loops:
        return None

    def count(body, prefixes):
        return sum(1 for i in body if i.opcode.startswith(prefixes))

    with_mma = [b for b in loops if count(b, MMA_OPCODES)]
    if with_mma:
        body = min(with_mma, key=len)
        mma = [_flops_per_warp(i.opcode) for i in body if i.opcode.startswith(MMA_OPCODES)]
        mma = [f for f in mma if f]
        kind = next(i.opcode.split(".")[0] for i in body if i.opcode.startswith(MMA_OPCODES))
        math, flops, peak_class = len(mma), sum(f[0] for f in mma), mma[0][1] if mma else None
    else:
        with_fma = [b for b in loops if count(b, ("FFMA", "DFMA"))]
        body = min(with_fma, key=len) if with_fma else min(loops, key=len)
        ffma, dfma = count(body, ("FFMA",)), count(body, ("DFMA",))
        if ffma or dfma:
            kind, math = ("FFMA", ffma) if ffma >= dfma else ("DFMA", dfma)
            flops, peak_class = 64.0 * math, kind.lower()
        else:
            kind, math, flops, peak_class = "-", 0, 0.0, None
    bound = None
    if peak_class:
        bound = min(1.0, SUB_PARTITIONS * flops / len(body) / PEAK_PER_SM_CYCLE[arch][peak_class])
    return LoopReport(len(body), math, kind, flops, bound, count(body, ("LDL", "STL")), count(body, ("BAR",)))


def ctas_per_sm(registers: int, warps: int, shared: int, shared_per_sm: int) -> int:
    """Resident CTAs per SM from registers (256-register warp granules), shared memory (1 KB
    reserved per CTA), threads (2048) and the 32-CTA limit."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // per_warp) // warps
    by_shared = shared_per_sm // (shared + 1024) if shared else 32
    return max(0, min(by_regs, by_shared, 2048 // (32 * warps), 32))
