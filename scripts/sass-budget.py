#!/usr/bin/env python3
"""Per-pair SASS instruction counts of the generated kernels' main loops, against a budget.

    scripts/sass-budget.py CORPUS_DIR [--budget cuda/sass-budget.txt] [--update] [--markdown OUT]
    scripts/sass-budget.py --self-test

CORPUS_DIR holds `<label>.cu` modules (`LK_SASS_CORPUS=DIR cargo test --test sass_kernels_tests`
writes them). Each has a line `// lk-sass-loop rows=R loads=L` before its `<name>_main` kernel:
R output rows per thread, L 16-byte shared-memory loads (LDS) per term of the main loop.

Method, per module:
  1. `nvcc -cubin -arch=sm_90 -Xptxas -v`: registers, spill bytes (stores + loads) and shared
     memory of `<name>_main`; `cuobjdump -sass` of the cubin, section `Function : <name>_main`.
  2. Each instruction: address, guard predicate, opcode with modifiers, operands, and for BRA
     its target. The control-flow graph is built per instruction (BRA, EXIT, RET end a path
     unless guarded; CALL returns to the next instruction, the callee is not followed).
  3. Loops: a backward branch whose target dominates it (cold blocks that jump back into the
     middle of a loop are not loops); the body is the natural loop (what reaches the branch
     without passing the head); back-edges to one head make one loop. The MAIN LOOP: among
     the loops with LDS that hold no other loop with LDS (an outer tile loop holds the main
     loop and its remainder; an ArgKMin insertion loop loads nothing), the one with the most
     LDS (the first on a tie). Pairs per iteration = R * LDS / L, a whole number or an error.
  4. Counts by class, divided by the pairs per iteration: `static` over the whole body, `path`
     along the common path. The generator ends the lines of the rare part of an update (a new
     maximum in LogSumExp, an insertion in ArgKMin) with `// lk-rare`; the module is compiled
     with `-lineinfo` and `nvdisasm -gi` says which source lines, inlined calls included, each
     instruction comes from: those of rare lines are not on the common path (unless a common
     branch jumps to them: a join such as BSYNC may carry a rare line). Among the others
     the common path is the shortest path (in instructions) from the loop head to a
     back-edge branch, where a branch whose guard was last set in its block by a
     special-value test (FSETP/DSETP against +-INF, .NAN, .NUM) goes the way an ordinary
     number takes it; other branches (loop counters, flags, slow-path guards such as FCHK or
     thresholds) go either way, whichever is shorter.
     Classes: fp32 = FADD FMUL FFMA FMNMX FSEL FSET FSETP FCHK FSWZADD and the f16x2 forms
     HADD2 HMUL2 HFMA2 HMNMX2 HSET2 HSETP2 (not HFMA2.MMA, ptxas' register move: other);
     mufu = MUFU.*; lds = LDS*; cvt = F2F F2I I2F F2FP I2FP F2IP I2I I2IP FRND; fp64 = DADD DMUL
     DFMA DSETP DSET DMNMX; branch = BRA BRX JMP JMX BSSY BSYNC BREAK WARPSYNC BMOV EXIT YIELD
     KILL; call = CALL RET (division and slow-path calls); other = everything else (integer,
     predicate, moves, uniform datapath, NOP); total = every issued instruction.
  5. Budget (`cuda/sass-budget.txt`): per kernel registers, spill bytes and the per-pair
     `path` counts. Exceeding a figure, a budget kernel missing from the corpus or a corpus
     kernel missing from the budget fails (exit 1, one line each); a total more than 10% below
     its budget is noted ("tighten the budget"). `--update` rewrites the file from the counts.

Predicted time at M = N = 10^6 (10^12 pairs) on an H100/H200 SXM: 10^12 / rate with
    rate = 132 SMs * 1.98e9 Hz * 4 schedulers * 32 lanes / max(total, 8 * mufu, 2 * fp64)
(per-pair counts). One warp instruction per scheduler per clock is 128 lane-instructions per
clock per SM; the SFU gives 16 MUFU results and the FP64 units 64 results per clock per SM, so
a MUFU costs 128/16 = 8 issue slots' worth of time and an FP64 instruction 128/64 = 2. Sources:
NVIDIA H100 Tensor Core GPU Architecture whitepaper (132 SMs, 4 sub-partitions of 32 lanes,
1.98 GHz boost of H100 SXM5; H200 has the same GH100 SM configuration and clock) and the CUDA
C++ Programming Guide, "Arithmetic Instructions" throughput table, compute capability 9.0.
The table names the limiting term (issue, mufu, fp64).

Limits: these are static counts, not timings: no latency, memory, occupancy, dual-issue or
bank-conflict model, and a predicted time is a lower bound reachable only with enough warps
in flight. The path measure assumes that the not-taken direction of data-dependent branches
is the common one and that a shorter way is the common one elsewhere (slow paths); a path can
still be one that never runs (the two directions of a flag tested twice). The static measure
counts each instruction of the body once, whatever its frequency. Called subroutines are not
counted beyond the CALL (the slow paths of division and sqrt are rarely taken).
"""

import argparse
import concurrent.futures
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

CLASSES = ("fp32", "mufu", "lds", "cvt", "fp64", "branch", "call", "other")
BUDGET_COLUMNS = ("regs", "spill") + CLASSES + ("total",)
OPCODE_CLASS = {
    **dict.fromkeys("FADD FMUL FFMA FMNMX FSEL FSET FSETP FCHK FSWZADD".split(), "fp32"),
    **dict.fromkeys("HADD2 HMUL2 HFMA2 HMNMX2 HSET2 HSETP2".split(), "fp32"),
    **dict.fromkeys("F2F F2I I2F F2FP I2FP F2IP I2I I2IP FRND".split(), "cvt"),
    **dict.fromkeys("DADD DMUL DFMA DSETP DSET DMNMX".split(), "fp64"),
    **dict.fromkeys("BRA BRX JMP JMX BSSY BSYNC BREAK WARPSYNC BMOV EXIT YIELD KILL".split(), "branch"),
    **dict.fromkeys("CALL RET".split(), "call"),
    "MUFU": "mufu",
}
SMS, CLOCK_HZ, LANES_PER_CLOCK_PER_SM = 132, 1.98e9, 4 * 32
MUFU_COST, FP64_COST = 128 / 16, 128 / 64
PAIRS = 1e12
TIGHTEN = 0.9
DEFAULT_BUDGET = Path(__file__).resolve().parent.parent / "cuda" / "sass-budget.txt"

INSN = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P(?:T|\d+))\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
MARKER = re.compile(r"^// lk-sass-loop rows=(\d+) loads=(\d+)\s*$", re.M)


class SassError(Exception):
    """A corpus, a tool or a SASS listing that the script cannot measure."""


def expect(ok, what):
    """A self-test check (not `assert`, which `python3 -O` drops)."""
    if not ok:
        raise SassError(f"self-test failed: {what}")


def classify(op):
    """The class of an opcode with its modifiers (`MUFU.EX2`, `LDS.128`, `HFMA2.MMA`)."""
    base = op.split(".")[0]
    if op.startswith("HFMA2.MMA"):
        return "other"
    if base.startswith("LDS"):
        return "lds"
    return OPCODE_CLASS.get(base, "other")


def parse_function(sass, name):
    """The instructions of `Function : name` in cuobjdump's listing, as dicts."""
    m = re.search(r"Function : %s\s*\n(.*?)(?=\n\s*Function : |\Z)" % re.escape(name), sass, re.S)
    if not m:
        raise SassError(f"no `Function : {name}` in the SASS listing")
    insns = []
    for line in m.group(1).splitlines():
        i = INSN.match(line)
        if not i:
            continue
        addr, pred, op, operands = int(i.group(1), 16), i.group(2), i.group(3), i.group(4).strip()
        target = None
        if op.split(".")[0] == "BRA":
            hexes = re.findall(r"0x[0-9a-f]+", operands)
            if not hexes:
                raise SassError(f"{name}: BRA without a target at {addr:#x}: {line.strip()}")
            target = int(hexes[-1], 16)
        insns.append(dict(addr=addr, pred=pred, op=op, operands=operands, target=target, cls=classify(op)))
    if not insns:
        raise SassError(f"{name}: no instructions parsed")
    return insns


def successors(insns):
    """Per instruction, the indices of the instructions that can follow it."""
    index = {x["addr"]: k for k, x in enumerate(insns)}
    out = []
    for k, x in enumerate(insns):
        base = x["op"].split(".")[0]
        guarded = x["pred"] not in (None, "@PT")
        nxt = [k + 1] if k + 1 < len(insns) else []
        if base in ("BRX", "JMX", "JMP"):
            raise SassError(f"indirect or absolute jump at {x['addr']:#x} ({x['op']}): not supported")
        if base in ("EXIT", "RET"):
            out.append(nxt if guarded else [])
        elif base == "BRA":
            if x["target"] not in index:
                raise SassError(f"BRA at {x['addr']:#x} to {x['target']:#x}, outside the function")
            # `BRA P3, 0x..`, `BRA.DIV UR4, 0x..`: a condition among the operands.
            conditional = guarded or "," in x["operands"]
            out.append([index[x["target"]]] + (nxt if conditional else []))
        else:
            out.append(nxt)
    return out


def reach(succ, start, avoid=None):
    """Indices reachable from `start` along `succ`, never entering `avoid`."""
    seen, todo = {start}, [start]
    while todo:
        for n in succ[todo.pop()]:
            if n != avoid and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def find_loops(insns, succ):
    """Natural loops: {head index: (body indices, back-edge branch indices)}."""
    pred = [[] for _ in insns]
    for k, ns in enumerate(succ):
        for n in ns:
            pred[n].append(k)
    live = reach(succ, 0)
    loops = {}
    for src, ns in enumerate(succ):
        for head in ns:
            if head > src or src not in live:
                continue
            if head not in (0, src) and src in reach(succ, 0, avoid=head):
                continue  # the head does not dominate the branch: not a loop
            body, latches = loops.setdefault(head, (set(), set()))
            body |= reach(pred, src, avoid=head) | {head}
            latches.add(src)
    return loops


def setp_value(x):
    """An `FSETP/DSETP.cmp.AND P, PT, a, b, PT`'s value for ordinary (finite) numbers when it
    tests for a special value (NaN, +-INF); "data" when it compares two values; else None."""
    m = re.match(r"[FD]SETP\.([A-Z]+)\.AND", x["op"])
    ops = [o.strip() for o in x["operands"].split(",")]
    if not m or len(ops) != 5 or ops[1] != "PT" or ops[4] != "PT":
        return None
    if m.group(1) in ("NAN", "NUM"):
        return m.group(1) == "NUM"

    def value(operand):  # an ordinary number is 0, a literal other than INF unknown
        if "INF" in operand:
            return -math.inf if operand.startswith("-") else math.inf
        return 0.0 if re.search(r"\bU?R(?:Z|\d+)\b|c\[", operand) else None

    a, b = value(ops[2]), value(ops[3])
    if a is None or b is None:
        return None
    if a == b == 0.0:
        return "data"
    cmp = dict(EQ=a == b, NE=a != b, LT=a < b, LE=a <= b, GT=a > b, GE=a >= b)
    return cmp.get(m.group(1).removesuffix("U"))


def branch_direction(insns, k, labels):
    """Where the conditional branch `k` goes on the common path: "taken", "fall" or None (any).

    Its guard's last write in the same basic block decides: a special-value test goes the
    ordinary number's way; anything else, a comparison of two data values included (the rare
    code it guards is marked `lk-rare` and off the path), is free."""
    x = insns[k]
    guard = re.fullmatch(r"@(!?)(P\d)", x["pred"] or "")
    if not guard:
        return None
    for j in range(k - 1, -1, -1):
        y = insns[j]
        if y["op"].split(".")[0] in ("BRA", "CALL", "EXIT", "RET"):
            return None
        dests = [o.strip() for o in y["operands"].split(",")][:2]  # predicate outputs come first
        if guard.group(2) in dests:
            v = setp_value(y) if dests[0] == guard.group(2) else None
            break
        if y["addr"] in labels:
            return None
    else:
        return None
    if v is None or v == "data":
        return None
    taken = v != (guard.group(1) == "!")
    if "," in x["operands"]:  # `@P0 BRA P1, ..`: taken only if both hold
        return None if taken else "fall"
    return "taken" if taken else "fall"


def rare_addresses(listing, name, rare_lines):
    """Addresses of `name`'s instructions compiled from one of `rare_lines`, directly or through
    an inlined call, in an `nvdisasm -gi` listing (each instruction follows the `//## File ..,
    line N [inlined at .., line M]` comments of its source lines, or keeps the previous ones)."""
    rare, chain, block, inside = set(), set(), [], False
    for line in listing.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.(\w+)", line)
        if m:
            inside = m.group(1) == name
            continue
        m = re.match(r'\s*//## File ".*?", line (\d+)(?: inlined at ".*?", line (\d+))?', line)
        if m:
            block.append({int(n) for n in m.groups() if n})
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/", line)
        if m:
            if block:
                chain, block = set().union(*block), []
            if inside and chain & rare_lines:
                rare.add(int(m.group(1), 16))
    return rare


def common_path(insns, succ, body, head, latches):
    """The shortest path (in instructions) from `head` to a back-edge branch inside `body`,
    each conditional branch going the way `branch_direction` says when it says."""
    labels = {x["target"] for x in insns if x["target"] is not None}
    parent, todo = {head: None}, deque([head])
    while todo:
        k = todo.popleft()
        if k in latches:
            path = []
            while k is not None:
                path.append(k)
                k = parent[k]
            return path[::-1]
        nexts = succ[k]
        if len(nexts) == 2:
            way = branch_direction(insns, k, labels)
            nexts = {"taken": nexts[:1], "fall": nexts[1:], None: nexts}[way]
        for n in nexts:
            if n in body and n not in parent:
                parent[n] = k
                todo.append(n)
    raise SassError(f"no path from the loop head at {insns[head]['addr']:#x} to its back-edge")


def count(insns, indices):
    """Instructions by class, plus `total`."""
    c = dict.fromkeys(CLASSES, 0)
    for k in indices:
        c[insns[k]["cls"]] += 1
    c["total"] = len(indices)
    return c


def measure_loop(sass, name, rows, loads, rare=frozenset()):
    """The main loop of `name`: pairs per iteration, per-pair `path` and `static` counts; the
    instructions at the addresses `rare` are not on the path."""
    insns = parse_function(sass, name)
    succ = successors(insns)
    loops = find_loops(insns, succ)
    lds = {h: sum(insns[k]["cls"] == "lds" for k in body) for h, (body, _) in loops.items()}
    # Innermost among the loops that load: an outer tile loop holds the main loop's loads and
    # more (its remainder), an ArgKMin insertion loop inside the main loop loads nothing.
    inner = [h for h in loops if lds[h] and not any(g != h and lds[g] and g in loops[h][0] for g in loops)]
    if not inner:
        raise SassError(f"{name}: no loop with shared-memory loads (LDS) ({len(loops)} loops)")
    head = max(inner, key=lambda h: (lds[h], -h))
    body, latches, most = *loops[head], lds[head]
    if loads <= 0 or (rows * most) % loads:
        raise SassError(
            f"{name}: the main loop at {insns[head]['addr']:#x} has {most} LDS, not a whole "
            f"number of terms of {loads} loads (rows={rows})"
        )
    pairs = rows * most // loads
    # A join that a common instruction branches to (a BSYNC carrying a rare line) is common.
    joins = {insns[k]["target"] for k in body if insns[k]["addr"] not in rare}
    off_path = rare - joins
    common = {k for k in body if insns[k]["addr"] not in off_path}
    if head not in common or not latches <= common:
        raise SassError(f"{name}: the main loop's head or back-edge is marked rare")
    path = count(insns, common_path(insns, succ, common, head, latches))
    static = count(insns, body)
    path, static = ({k: v / pairs for k, v in c.items()} for c in (path, static))
    return dict(head=insns[head]["addr"], pairs=pairs, path=path, static=static)


def parse_ptxas(log, name):
    """Registers, spill bytes (stores + loads) and shared memory of `name` from `ptxas -v`."""
    stats, current = {}, None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m:
            current = stats.setdefault(m.group(1), dict(regs=0, spill=0, smem=0))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    if name not in stats:
        raise SassError(f"no ptxas statistics for {name} (nvcc -Xptxas -v)")
    return stats[name]


def run(cmd):
    """A tool's stdout and stderr; a SassError when it is missing or fails."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SassError(f'{cmd[0]} is not on PATH (eval "$(scripts/cuda-toolchain.sh --env)")') from None
    if r.returncode:
        raise SassError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout + r.stderr


def measure_module(cu, workdir):
    """Compile one corpus module for sm_90 and measure its main kernel."""
    text = cu.read_text()
    marker = MARKER.search(text)
    names = set(re.findall(r"\b(\w+_main)\(", text))
    if not marker or len(names) != 1:
        raise SassError(f"{cu.name}: expected a `// lk-sass-loop rows=R loads=L` line and one *_main kernel")
    name = names.pop()
    cubin = Path(workdir) / (cu.stem + ".cubin")
    log = run(["nvcc", "-cubin", "-arch=sm_90", "-lineinfo", "-Xptxas", "-v", "-o", str(cubin), str(cu)])
    sass = run(["cuobjdump", "-sass", str(cubin)])
    lines = text.splitlines()
    rare_lines = {n for n, line in enumerate(lines, 1) if line.rstrip().endswith("// lk-rare")}
    rare = rare_addresses(run(["nvdisasm", "-gi", "-c", str(cubin)]), name, rare_lines) if rare_lines else set()
    if rare_lines and not rare:
        raise SassError(f"{cu.name}: {len(rare_lines)} lines marked lk-rare, no instruction from them")
    try:
        m = measure_loop(sass, name, int(marker.group(1)), int(marker.group(2)), rare)
    except SassError as e:
        raise SassError(f"{cu.name}: {e}") from None
    m.update(parse_ptxas(log, name))
    return m


def predict(per_pair):
    """Seconds for 10^12 pairs on an H100/H200 and the limiting term (see the docstring)."""
    terms = dict(
        issue=per_pair["total"], mufu=MUFU_COST * per_pair["mufu"], fp64=FP64_COST * per_pair["fp64"]
    )
    limit = max(terms, key=terms.get)
    rate = SMS * CLOCK_HZ * LANES_PER_CLOCK_PER_SM / terms[limit]
    return PAIRS / rate, limit


def budget_row(m):
    """A measured kernel's figures in the budget's columns and precision."""
    per_pair = {k: round(m["path"][k], 2) for k in CLASSES + ("total",)}
    return dict(regs=m["regs"], spill=m["spill"], **per_pair)


def read_budget(path):
    """{kernel: {column: figure}} from a budget file."""
    budget = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("#")[0].split()
        if not fields:
            continue
        if len(fields) != 1 + len(BUDGET_COLUMNS):
            raise SassError(f"{path}:{n}: expected the fields kernel {' '.join(BUDGET_COLUMNS)}")
        try:
            budget[fields[0]] = dict(zip(BUDGET_COLUMNS, map(float, fields[1:])))
        except ValueError:
            raise SassError(f"{path}:{n}: not a number in {line!r}") from None
    return budget


def write_budget(path, measured):
    """The budget file for the measured kernels, as an aligned table under a header comment."""
    rows = [["# kernel", *BUDGET_COLUMNS]]
    for label, m in sorted(measured.items()):
        figures = budget_row(m).values()
        rows.append([label] + [f"{v:g}" if isinstance(v, int) else f"{v:.2f}" for v in figures])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "# Per-pair SASS instruction budget of the generated kernels' main loops (sm_90, nvcc from",
        "# scripts/cuda-toolchain.sh), checked in CI by scripts/check-cuda.sh. Columns: registers and",
        "# spill bytes of <name>_main, then instructions per pair by class along the loop's common",
        "# path (see scripts/sass-budget.py). Regenerate: scripts/sass-budget.py CORPUS --update",
    ]
    lines += ["  ".join(f.ljust(w) for f, w in zip(r, widths)).rstrip() for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def check(measured, budget):
    """(violations, notes): one line each."""
    violations, notes = [], []
    for label in sorted(set(budget) | set(measured)):
        if label not in measured:
            violations.append(f"{label}: in the budget but not in the corpus")
            continue
        if label not in budget:
            violations.append(f"{label}: in the corpus but not in the budget (add it with --update)")
            continue
        have, allowed = budget_row(measured[label]), budget[label]
        for col in BUDGET_COLUMNS:
            if have[col] > allowed[col] + 1e-9:
                unit = " bytes" if col == "spill" else "" if col == "regs" else " per pair"
                violations.append(f"{label}: {col} {have[col]:g}{unit} > budget {allowed[col]:g}")
        if have["total"] < TIGHTEN * allowed["total"]:
            notes.append(
                f"{label}: total {have['total']:g} is over 10% below the budget {allowed['total']:g}"
                " (tighten the budget)"
            )
    return violations, notes


def markdown(measured, budget):
    """The table of the measured kernels (with their budget totals) and a legend."""
    head = ["kernel", "regs", "smem", "pairs/iter", *CLASSES, "total", "static total", "budget total"]
    head += ["predicted (M=N=1e6)", "limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in sorted(measured.items()):
        seconds, limit = predict(m["path"])
        b = budget.get(label, {}).get("total")
        cells = [label, m["regs"], m["smem"], m["pairs"]]
        cells += [f"{m['path'][k]:.2f}" for k in CLASSES + ("total",)] + [f"{m['static']['total']:.2f}"]
        cells += ["-" if b is None else f"{b:.2f}", f"{seconds * 1e3:.0f} ms", limit]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    lines.append("Instructions per pair along the main loop's common path (static total: the whole loop")
    lines.append("body); predicted: 1e12 pairs on an H100/H200 (132 SMs, 1.98 GHz) at max(total, 8 mufu,")
    lines.append("2 fp64) issue slots per pair (scripts/sass-budget.py).")
    return "\n".join(lines) + "\n"


SELF_TEST_SASS = """
        Function : selftest_main
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   CS2R R12, SRZ ;
        /*0020*/                   ISETP.GE.AND P1, PT, R0, 0x4, PT ;
        /*0030*/                   STS [R0], R2 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/                   LDS.128 R4, [R0] ;
        /*0060*/                   LDS.128 R8, [R0+0x10] ;
        /*0070*/                   FADD R4, R4, -R8 ;
        /*0080*/               @P3 BRA 0x1b0 ;
        /*0090*/                   FSETP.NEU.AND P4, PT, |R4|, +INF , PT ;
        /*00a0*/              @!P4 BRA 0x120 ;
        /*00b0*/                   FMUL R4, R4, R4 ;
        /*00c0*/                   FSETP.GT.AND P0, PT, R4, R3, PT ;
        /*00d0*/               @P0 BRA 0x1d0 ;
        /*00e0*/                   MUFU.EX2 R5, R4 ;
        /*00f0*/                   F2F.F64.F32 R6, R5 ;
        /*0100*/                   DADD R12, R12, R6 ;
        /*0110*/                   CALL.REL.NOINC 0x190 ;
        /*0120*/                   IADD3 R0, R0, 0x20, RZ ;
        /*0130*/                   ISETP.NE.AND P2, PT, R0, R1, PT ;
        /*0140*/                   BRA.U UP2, 0x50 ;
        /*0150*/              @!P1 BRA 0x20 ;
        /*0160*/                   EXIT ;
        /*0170*/                   BRA 0x170;
        /*0180*/                   NOP;
        /*0190*/                   FADD R3, R3, 1 ;
        /*01a0*/                   RET.REL.NODEC R2 0x0 ;
        /*01b0*/                   FMUL R4, R4, 2 ;
        /*01c0*/                   BRA 0x90 ;
        /*01d0*/                   MOV R3, R4 ;
        /*01e0*/                   BRA 0x120 ;
        ..........
"""
SELF_TEST_PTXAS = """ptxas info    : Compiling entry function 'selftest_main' for 'sm_90'
ptxas info    : Function properties for selftest_main
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem
"""


def self_test():
    """Checks the parser and the counts on the embedded listing; raises on a mismatch."""
    # Two loops: the outer one at 0x20 and the inner one at 0x50 (two LDS, like the outer loop
    # around it), whose back-edge is conditional on an operand (`BRA.U UP2`). Out of line but
    # in the inner loop: a cold block (0x1b0, its jump back is no loop: 0x90 does not dominate
    # it) and a rare one (0x1d0, a new maximum, marked rare). The common path (16 instructions
    # for 2 pairs) falls through at 0x80 (shorter), 0xa0 (an ordinary number is not INF,
    # although the branch is shorter) and 0xd0 (the branch goes to rare code, although shorter).
    insns = parse_function(SELF_TEST_SASS, "selftest_main")
    heads = sorted(insns[h]["addr"] for h in find_loops(insns, successors(insns)))
    expect(heads == [0x20, 0x50], f"loop heads {heads}")
    ops = "FFMA HFMA2 HFMA2.MMA LDS.U.128 MUFU.RSQ F2FP.F16.F32.PACK_AB DSETP.GE.AND BSYNC CALL.REL IMAD.MOV"
    classes = [classify(op) for op in ops.split()]
    expect(classes == "fp32 fp32 other lds mufu cvt fp64 branch call other".split(), f"classes {classes}")
    tests = ["FSETP.NAN.AND P0, PT, R1, R1, PT", "DSETP.NUM.AND P0, PT, R2, R2, PT"]
    tests += ["FSETP.GEU.AND P0, PT, R1, -INF , PT", "FSETP.GT.AND P0, PT, |R1|, UR4, PT"]
    tests += ["FSETP.GT.AND P0, PT, R1, 1.5, PT", "FSETP.GT.AND P0, PT, R1, R2, P3"]
    values = [setp_value(dict(op=t.split()[0], operands=t.split(None, 1)[1])) for t in tests]
    expect(values == [False, True, True, "data", None, None], f"setp values {values}")
    rare = {0x1D0, 0x1E0}
    m = measure_loop(SELF_TEST_SASS, "selftest_main", rows=1, loads=1, rare=rare)
    want_path = dict(fp32=2, mufu=0.5, lds=1, cvt=0.5, fp64=0.5, branch=2, call=0.5, other=1, total=8)
    want_static = dict(fp32=2.5, mufu=0.5, lds=1, cvt=0.5, fp64=0.5, branch=3, call=0.5, other=1.5, total=10)
    got = (m["head"], m["pairs"], m["path"], m["static"])
    expect(got == (0x50, 2, want_path, want_static), f"main loop counts {got}")
    expect(measure_loop(SELF_TEST_SASS, "selftest_main", rows=2, loads=1)["pairs"] == 4, "rows=2: 4 pairs")
    for rows, loads in ((1, 3), (1, 0)):
        try:
            measure_loop(SELF_TEST_SASS, "selftest_main", rows=rows, loads=loads)
        except SassError as e:
            expect("whole number" in str(e), f"rows={rows} loads={loads}: {e}")
        else:
            expect(False, f"rows={rows} loads={loads} (not a whole number of terms) must fail")
    listing = "\n".join(
        [
            "\t.section\t.text.other_main,\"ax\",@progbits",
            '\t//## File "k.cu", line 7',
            "        /*0000*/  FADD R1, R2, R3 ;",
            "\t.section\t.text.selftest_main,\"ax\",@progbits",
            '\t//## File "k.cu", line 5',
            "        /*0000*/  FADD R1, R2, R3 ;",
            '\t//## File "k.cu", line 90 inlined at "k.cu", line 7',
            '\t//## File "k.cu", line 7',
            "        /*0010*/  MUFU.EX2 R1, R1 ;",
            "        /*0020*/  FADD R1, R2, R3 ;",
            '\t//## File "k.cu", line 8',
            "        /*0030*/  FADD R1, R2, R3 ;",
        ]
    )
    got = rare_addresses(listing, "selftest_main", {7})
    expect(got == {0x10, 0x20}, f"rare addresses {sorted(got)}")
    free = measure_loop(SELF_TEST_SASS, "selftest_main", rows=1, loads=1)["path"]["total"]
    expect(free < want_path["total"], f"unmarked, the data branch takes the shorter way: {free}")
    stats = parse_ptxas(SELF_TEST_PTXAS, "selftest_main")
    expect(stats == dict(regs=40, spill=12, smem=4096), f"ptxas statistics {stats}")
    m.update(regs=40, spill=0, smem=4096)
    expect(predict(m["path"])[1] == "issue", "8 issue slots per pair against 4 for 0.5 MUFU")
    seconds = PAIRS * 8 / (SMS * CLOCK_HZ * 128)
    expect(predict(dict(total=5.5, mufu=1, fp64=0)) == (seconds, "mufu"), "1 MUFU: 8 slots per pair")
    budget = {"selftest": budget_row(m), "gone": budget_row(m)}
    budget["selftest"].update(total=5.0)
    violations, notes = check({"selftest": m, "new": m}, budget)
    expect(
        violations
        == [
            "gone: in the budget but not in the corpus",
            "new: in the corpus but not in the budget (add it with --update)",
            "selftest: total 8 per pair > budget 5",
        ]
        and not notes,
        f"budget check {violations} {notes}",
    )
    budget["selftest"].update(total=9.5)
    violations, notes = check({"selftest": m}, {"selftest": budget["selftest"]})
    expect(not violations and len(notes) == 1 and "tighten" in notes[0], f"tighten note {notes}")
    print("sass-budget: self-test passed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", nargs="?", type=Path, help="directory of <label>.cu modules")
    ap.add_argument("--budget", type=Path, default=DEFAULT_BUDGET)
    ap.add_argument("--update", action="store_true", help="rewrite the budget from the measured counts")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--self-test", action="store_true", help="check the parser on an embedded listing")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    if args.corpus is None:
        ap.error("CORPUS_DIR is required")
    modules = sorted(args.corpus.glob("*.cu"))
    if not modules:
        raise SassError(f"no .cu file in {args.corpus}")
    with tempfile.TemporaryDirectory() as work, concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as jobs:
        futures = {cu.stem: jobs.submit(measure_module, cu, work) for cu in modules}
        measured = {label: f.result() for label, f in futures.items()}
    if args.update:
        write_budget(args.budget, measured)
        print(f"sass-budget: wrote {args.budget} ({len(measured)} kernels)", file=sys.stderr)
    budget = read_budget(args.budget) if args.budget.exists() else {}
    table = markdown(measured, budget)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    violations, notes = check(measured, budget)
    for line in notes:
        print(f"sass-budget: note: {line}")
    for line in violations:
        print(f"sass-budget: FAIL: {line}", file=sys.stderr)
    if violations:
        print(f"sass-budget: {len(violations)} budget violations ({args.budget})", file=sys.stderr)
        return 1
    print(f"sass-budget: {len(measured)} kernels within the budget ({args.budget})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SassError as e:
        print(f"sass-budget: error: {e}", file=sys.stderr)
        sys.exit(1)
