#!/usr/bin/env python3
"""The scaling model of sharded products, CG iterations and GP steps (README, "Beyond one
device"): prints its tables. Inputs, each named and sourced below; change them on the command
line as NAME=VALUE (e.g. `python3 scripts/scaling-model.py IB_GBS=22`).

The model. A product `K b` over N points on P GPUs: each GPU evaluates N^2 / P pairs at the
per-device rate measured on the H200, then an all-gather gives every GPU the N E values of the
result (8 bytes each: the iterates are f64). NCCL's ring all-gather moves (P - 1) / P of the
total through each GPU's link, at the bus bandwidth of the slowest link in the ring (NVLink
within a host of 8, InfiniBand across hosts), plus (P - 1) latency steps. What lazy-kernels
does today adds a host round trip (the gather goes through host memory: the rank's block
device-to-host, the whole result host-to-device) over PCIe. A CG iteration is one product, its
all-gather, and O(N E) vector work replicated on every GPU (memory-bound). Overlapping the
all-gather with the product (pipelining the rows in chunks: gather chunk k while computing
chunk k + 1) hides the shorter of the two: max instead of sum.
A GP step (NLL + gradient, default settings) costs STEP_PRODUCTS product-equivalents of
compute (measured on the H200 at N = 1e5: 0.83 s / 4.71 ms) and STEP_GATHERS all-gathers of
N x (1 + probes) values (the CG iterations of the solve and of the gradient's, with the probes
as extra columns).
"""
import sys

P = dict(
    # H200, f32 Gaussian sum, D = 3, N = 1e6: 0.412 s = 2.43e12 pairs/s
    # (../shared/gpu-runs/2026-12-04-h200/README.md).
    RATE=2.43e12,
    # NCCL all-gather bus bandwidth, GB/s: NVLink 4 within an 8-GPU H100/H200 host (NCCL
    # tests report ~350-370), and one 400 Gb/s InfiniBand NDR NIC per GPU across hosts (~45).
    NVLINK_GBS=350.0,
    IB_GBS=45.0,
    # Per-step latency of a ring step, seconds (NVLink ~ 5 us, InfiniBand ~ 8 us).
    NVLINK_LAT=5e-6,
    IB_LAT=8e-6,
    GPUS_PER_HOST=8,
    # Host round trip of today's gather: PCIe 5 x16, ~25 GB/s each way in practice.
    PCIE_GBS=25.0,
    # HBM bandwidth (H200: 4.8 TB/s) and the replicated vector work of a CG iteration:
    # ~12 passes over N x E f64 values.
    HBM_GBS=4800.0,
    VECTOR_PASSES=12,
    # A GP step: product-equivalents of compute, all-gathers, and columns per gather.
    STEP_PRODUCTS=176.0,
    STEP_GATHERS=60,
    STEP_COLUMNS=11,
    # Bytes per gathered value.
    BYTES=8,
)
for arg in sys.argv[1:]:
    k, v = arg.split("=", 1)
    if k not in P:
        sys.exit(f"unknown input {k}; inputs: {', '.join(P)}")
    P[k] = float(v)


def link(p):
    """Bus bandwidth (bytes/s) and latency of the ring of p GPUs."""
    if p <= P["GPUS_PER_HOST"]:
        return P["NVLINK_GBS"] * 1e9, P["NVLINK_LAT"]
    return P["IB_GBS"] * 1e9, P["IB_LAT"]


def compute(n, p, e=1):
    # The exponential is shared by the columns; each extra column costs a fused multiply-add:
    # counted as 1 + 0.05 (e - 1) products.
    return n * n / p / P["RATE"] * (1 + 0.05 * (e - 1))


def gather(n, p, e=1, host=False):
    if p == 1:
        return 0.0
    bw, lat = link(p)
    total = n * e * P["BYTES"]
    t = total * (p - 1) / p / bw + (p - 1) * lat
    if host:
        t += (total / p + total) / (P["PCIE_GBS"] * 1e9)
    return t


def vectors(n, e=1):
    return P["VECTOR_PASSES"] * n * e * P["BYTES"] / (P["HBM_GBS"] * 1e9)


def fmt(t):
    if t >= 100:
        return f"{t:,.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


print("Per CG iteration (one product of one column, its all-gather, the replicated vector work):\n")
print("| N | GPUs | product | all-gather (NCCL, device) | + host round trip (today) | vectors | iteration, today | iteration, overlapped | communication share today |")
print("|---|---|---|---|---|---|---|---|---|")
for n in (1e7, 1e8):
    for p in (8, 64, 512):
        c, g, gh, v = compute(n, p), gather(n, p), gather(n, p, host=True), vectors(n)
        today = c + gh + v
        over = max(c, g) + v
        print(f"| {n:.0e} | {p} | {fmt(c)} | {fmt(g)} | {fmt(gh)} | {fmt(v)} | {fmt(today)} | {fmt(over)} | {100 * (gh + v) / today:.2f} % |")

print("\nPer GP step (NLL + gradient: %d product-equivalents, %d all-gathers of N x %d values):\n"
      % (P["STEP_PRODUCTS"], P["STEP_GATHERS"], P["STEP_COLUMNS"]))
print("| N | GPUs | compute | communication today | step today | step overlapped |")
print("|---|---|---|---|---|---|")
for n in (1e7, 1e8):
    for p in (8, 64, 512):
        c = P["STEP_PRODUCTS"] * compute(n, p)
        e = P["STEP_COLUMNS"]
        g = P["STEP_GATHERS"] * (gather(n, p, e, host=True) + vectors(n, e))
        go = P["STEP_GATHERS"] * (gather(n, p, e) + vectors(n, e))
        print(f"| {n:.0e} | {p} | {fmt(c)} | {fmt(g)} | {fmt(c + g)} | {fmt(max(c, go))} |")

print("\nWhere communication starts to dominate (all-gather today = product), by doubling P:\n")
print("| N | GPUs where the all-gather (today) reaches the product | with NCCL on the device |")
print("|---|---|---|")
for n in (1e6, 1e7, 1e8):
    out = []
    for host in (True, False):
        p = 2
        while compute(n, p) > gather(n, p, host=host) + vectors(n) and p < 1 << 24:
            p *= 2
        out.append(f"{p:,}")
    print(f"| {n:.0e} | {out[0]} | {out[1]} |")
