"""Benchmark the OpenCL kernels and the OpenCL forward pass beside the Cython (CPU) ones, per OpenCL device.

Usage: ``python ops/bench_opencl.py [--devices all|SEL,...] [--reps 5] [--shapes 2b4t,700m] [--prompt 128]
[--decode 32] [--no-model]``

1. Correctness first, on every device benchmarked (aborts on a mismatch): int8 activations, int32 products
   and the per-row-scaled ternary linear layer bit for bit against :mod:`kernels_cython.reference` on odd
   shapes; a small random model's logits within 1e-5 (relative) of the CPU engine's, with the same greedy
   tokens alone and inside a batch.
2. Bandwidth, measured in the same run: the host's (a 256 MiB numpy copy) and each device's (a 256 MiB
   device-to-device buffer copy); bytes copied per second.
3. Kernels, for the matrix shapes of BitNet-b1.58-2B-4T (2560x2560, 640x2560, 6912x2560, 2560x6912) and of the
   700M class (1536x1536, 4096x1536, 1536x4096), at M = 1 (GEMV, decode) and M = 128 (GEMM, prefill):
   median time of quantize + ternary product on device buffers (no host copies; the weights rotated over
   more than 64 MiB of copies, and twice the host's last-level cache, so they are not cache-resident), weight
   GB/s, % of the device's bandwidth, and the Cython kernel (``kernels_cython.ternary_linear``, all cores) on
   the same shape for comparison.
4. The whole model (``--shapes``, random weights with the real shapes, bf16 tied embedding): prefill
   tokens/s of a ``--prompt``-token prompt and decode tokens/s over ``--decode`` tokens, on each device and
   on the Cython CPU path, with bytes read per token and the device's bandwidth floor.

Medians of ``--reps`` runs.  Run it on an otherwise idle machine: a CPU OpenCL device (PoCL) shares the
cores with everything else.
"""

from __future__ import annotations

import os

# Before numpy loads: OpenBLAS's spinning idle workers would stall the OpenMP kernels measured here on the same
# cores (a numpy baseline runs right before them); see bitnet_actor/__init__.py.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import uncached_bytes

import kernels_cython
import kernels_opencl
from bitnet_actor.engine import SamplingParams
from bitnet_actor.engine.model import Model
from bitnet_actor.engine.synthetic import SHAPES, random_weights
from kernels_cython import reference as ref
from kernels_opencl import ops as clops

MATRICES = {
    "2b4t": [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
    "700m": [(1536, 1536), (4096, 1536), (1536, 4096)],
}


def say(*a: Any) -> None:
    print(*a, flush=True)


def require(ok: bool, what: str) -> None:
    """Stop the benchmark when a correctness check fails (before any figure is printed for it)."""
    if not ok:
        sys.exit(f"bench_opencl: correctness check failed: {what}")


def median_time(fn: Any, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ correctness


def check(ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(0)
    for m, n, k in [(1, 1, 1), (1, 37, 300), (9, 64, 1000), (130, 17, 2560)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = ref.TernaryMatrix.from_codes(rng.integers(-1, 2, (n, k)).astype(np.int8), 0.3)
        xq, s = kernels_opencl.quantize_activations(x, ctx)
        rq, rs = ref.quantize_activations(x)
        require(bool((xq == rq).all() and (s == rs).all()), f"quantization differs at {(m, n, k)}")
        acc = kernels_opencl.ternary_matmul_int32(rq, w, ctx)
        require(bool((acc == ref.ternary_matmul_int32(rq, w)).all()), f"int32 product differs at {(m, n, k)}")
        y = kernels_opencl.ternary_linear(x, w, ctx)
        require(bool((y == ref.ternary_linear(x, w)).all()), f"ternary_linear differs at {(m, n, k)}")
    import dataclasses

    # Small random models of the 2B-4T family.  Random weights make the int8 activation quantization
    # chaotic: a float-order difference of one ulp can flip one activation by one step, and that row's
    # keys/values then shift every later position of the prompt by ~1e-2 (the CPU's compiled and numpy paths
    # disagree the same way, at about 1% of positions).  So: every position within 3e-2, and most prompts
    # (12 short ones over 3 models; a flip hits ~15% of them) within 1e-5 at every position.
    cfg = dataclasses.replace(
        SHAPES["2b4t"], hidden_size=256, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=64,
        intermediate_size=512, vocab_size=1000, context_length=256,
    )  # fmt: skip
    ids = [int(t) for t in rng.integers(0, 1000, 40)]
    worst, clean, runs = 0.0, 0, 0
    for seed in (1, 2, 3):
        cpu_m, dev_m = Model(random_weights(cfg, seed=seed)), Model(random_weights(cfg, seed=seed), opencl=ctx)
        for _ in range(4):
            prompt = [int(t) for t in rng.integers(0, 1000, 12)]
            a, b = cpu_m.logits(prompt), dev_m.logits(prompt)
            r = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
            worst = max(worst, float(r.max()))
            clean += int(r.max() <= 1e-5)
            runs += 1
    require(worst <= 3e-2, f"model logits differ by {worst:.2e} at some position")
    require(clean * 2 >= runs, f"only {clean} of {runs} prompts match the CPU within 1e-5 at every position")
    dev = Model(random_weights(cfg, seed=2), opencl=ctx)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = (ids[:5], ids[:17], ids[:2])
    alone = [list(dev.generate(p, max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
    seqs = [dev.new_sequence(p, params) for p in prompts]
    while not all(s.finished for s in seqs):
        dev.step(seqs, prefill_chunk=8)
    require([s.output_ids for s in seqs] == alone, "greedy tokens differ alone and inside a batch")
    say(
        f"  correctness on {ctx.info}: int paths exact; model logits: {clean} of {runs} prompts within 1e-5 "
        f"of the CPU at every position, all within {worst:.1e}; greedy alone = in a batch"
    )


# ------------------------------------------------------------------------------------------------ bandwidth


def host_bandwidth(threads: int, nbytes: int = uncached_bytes(256 << 20), reps: int = 5) -> float:
    """Bytes copied per second by ``threads`` concurrent numpy copies (numpy releases the GIL)."""
    import threading

    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)
    part = nbytes // threads

    def copy() -> None:
        def one(i: int) -> None:
            np.copyto(dst[i * part : (i + 1) * part], src[i * part : (i + 1) * part])

        workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return nbytes / min(median_time(copy, 1) for _ in range(reps))


def device_bandwidth(ctx: kernels_opencl.Context, nbytes: int = 256 << 20, reps: int = 5) -> float:
    a, b = ctx.empty(nbytes), ctx.empty(nbytes)
    cl = ctx.cl

    def copy() -> None:
        cl.enqueue_copy(ctx.queue, b, a, byte_count=nbytes)
        ctx.finish()

    return nbytes / min(median_time(copy, 1) for _ in range(reps))


# ------------------------------------------------------------------------------------------------ kernels


def bench_matrix(ctx: kernels_opencl.Context, n: int, k: int, m: int, reps: int) -> tuple[float, float]:
    """(OpenCL seconds, Cython seconds) for quantize + ternary linear of m rows."""
    rng = np.random.default_rng(n + k)
    w = ref.TernaryMatrix.from_codes(rng.integers(-1, 2, (n, k)).astype(np.int8), 0.3)
    copies = max(2, -(-uncached_bytes(64 << 20) // w.nbytes) + 1)
    dws = [clops.DeviceTernaryMatrix(ctx, w)]
    dws += [clops.DeviceTernaryMatrix(ctx, w) for _ in range(copies - 1)]
    x = rng.standard_normal((m, k)).astype(np.float32)
    xb = ctx.to_device(x)
    xq, s, out = ctx.empty(m * w.padded_k), ctx.empty(4 * m), ctx.empty(4 * m * n)
    state = {"i": 0}

    def run_cl() -> None:
        dw = dws[state["i"] % len(dws)]
        state["i"] += 1
        clops.enqueue_quantize(ctx, xb, k, m, k, w.padded_k, xq, s)
        clops.enqueue_ternary_linear(ctx, xq, s, m, dw, out, n)
        ctx.finish()

    got = np.empty((m, n), np.float32)
    run_cl()
    ctx.read(out, got)
    require(bool((got == ref.ternary_linear(x, w)).all()), f"{n}x{k} M={m}: the device result differs")
    t_cl = median_time(run_cl, reps)
    ws = [w] + [ref.TernaryMatrix(w.packed.copy(), k, w.scale) for _ in range(copies - 1)]
    state["i"] = 0

    def run_cy() -> None:
        kernels_cython.ternary_linear(x, ws[state["i"] % len(ws)])
        state["i"] += 1

    t_cy = median_time(run_cy, reps)
    return t_cl, t_cy


# ------------------------------------------------------------------------------------------------ model


def bench_model(model: Model, prompt: list[int], decode: int, reps: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s)."""

    def prefill() -> None:
        seq = model.new_sequence(prompt, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
        model.step([seq], prefill_chunk=len(prompt))
        seq.release()

    t_pre = median_time(prefill, reps)

    def dec() -> float:
        seq = model.new_sequence(prompt[:4], SamplingParams(max_tokens=decode + 1, temperature=0, ignore_eos=True))
        model.step([seq])
        t0 = time.perf_counter()
        steps = 0
        while not seq.finished:
            model.step([seq])
            steps += 1
        return steps / (time.perf_counter() - t0)

    dec()
    return len(prompt) / t_pre, statistics.median(dec() for _ in range(reps))


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="all", help="all, or comma-separated selectors (P:D or name fragments)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--shapes", default="2b4t", help="model shapes for the decode table (2b4t, 700m)")
    p.add_argument("--prompt", type=int, default=128, help="prefill prompt length")
    p.add_argument("--decode", type=int, default=32, help="tokens decoded per run")
    p.add_argument("--no-model", action="store_true", help="kernels only")
    p.add_argument("--gemm-m", type=int, default=128, help="rows of the GEMM case")
    args = p.parse_args()

    try:
        infos = kernels_opencl.list_devices()
    except kernels_opencl.OpenCLUnavailableError as exc:
        sys.exit(f"bench_opencl: {exc}")
    sels = [i.index for i in infos] if args.devices == "all" else args.devices.split(",")
    if not sels:
        sys.exit("bench_opencl: no OpenCL device found (bash ops/pocl.sh install builds PoCL, a CPU one)")
    try:
        ctxs = [kernels_opencl.Context(s) for s in sels]
    except kernels_opencl.OpenCLError as exc:
        sys.exit(f"bench_opencl: {exc}")

    say("== correctness")
    for ctx in ctxs:
        check(ctx)

    say("\n== bandwidth (bytes copied per second, 256 MiB)")
    threads = kernels_cython.get_num_threads()
    host_bw = host_bandwidth(threads)
    say(f"  host ({threads} concurrent numpy copies, the Cython kernels' threads): {host_bw / 1e9:.1f} GB/s")
    dev_bw = {}
    for ctx in ctxs:
        dev_bw[ctx.info.index] = device_bandwidth(ctx)
        say(f"  {ctx.info}: {dev_bw[ctx.info.index] / 1e9:.1f} GB/s")

    say("\n== kernels: quantize + ternary linear on device buffers (median ms; GB/s of weight bytes)")
    say("| device | N x K | M | OpenCL ms | GB/s | % of device bw | Cython ms | OpenCL / Cython speed |")
    say("|---|---|---:|---:|---:|---:|---:|---:|")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for ctx in ctxs:
        bw = dev_bw[ctx.info.index]
        for shape in ("2b4t", "700m"):
            for n, k in MATRICES[shape]:
                for m in (1, args.gemm_m):
                    t_cl, t_cy = bench_matrix(ctx, n, k, m, args.reps)
                    gbs = n * k / 4 / t_cl
                    say(
                        f"| {ctx.info.name[:28]} | {n}x{k} | {m} | {t_cl * 1e3:.3f} | {gbs / 1e9:.1f} | "
                        f"{100 * gbs / bw:.0f}% | {t_cy * 1e3:.3f} | {t_cy / t_cl:.2f}x |"
                    )

    if args.no_model:
        return
    say(f"\n== model: prefill {args.prompt} tokens, decode {args.decode} tokens (median tok/s)")
    say("| model | runs on | load s | prefill tok/s | decode tok/s | MB read / token | floor tok/s | % of floor |")
    say("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        weights = random_weights(SHAPES[shape])
        prompt = [int(t) for t in np.random.default_rng(0).integers(0, 30000, args.prompt)]
        cpu = Model(weights)
        bpt = cpu.bytes_per_token
        pre, dec = bench_model(cpu, prompt, args.decode, args.reps)
        floor = host_bw / bpt
        say(
            f"| {shape} | CPU (Cython, {kernels_cython.get_num_threads()} threads) | - | {pre:.1f} | {dec:.2f} | "
            f"{bpt / 1e6:.0f} | {floor:.1f} | {100 * dec / floor:.0f}% |"
        )
        for ctx in ctxs:
            t0 = time.perf_counter()
            dev = Model(weights, opencl=ctx)
            load = time.perf_counter() - t0
            pre, dec = bench_model(dev, prompt, args.decode, args.reps)
            floor = dev_bw[ctx.info.index] / bpt
            say(
                f"| {shape} | {ctx.info.name[:28]} | {load:.1f} | {pre:.1f} | {dec:.2f} | {bpt / 1e6:.0f} | "
                f"{floor:.1f} | {100 * dec / floor:.0f}% |"
            )
            del dev


if __name__ == "__main__":
    main()
