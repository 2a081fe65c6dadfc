"""Benchmark the Cython ternary kernels on BitNet shapes.

Usage: ``python ops/bench_kernels.py [--quick] [--isa ISA] [--threads 1,2]``

1. Checks the fast kernels against the numpy reference (exact equality) on every available ISA path.
2. Measures this machine's memory bandwidth with large numpy copies (one per thread count's worth of worker
   processes, running concurrently), counted as bytes copied per second (each byte is read once and written
   once; on this machine that figure matches a pure streaming-read kernel, and the weights are only read).
   Bytes read + written per second (STREAM's "copy" convention) is printed too.  The machine is shared, so
   the bandwidth is measured again right before each table row and each row's %bw uses its own figure.
3. For the shapes of BitNet-b1.58-2B-4T and of a 700M model, at M = 1 (decode GEMV), M = 4 (small batched
   decode) and M = 128 (prefill / batched GEMM) and each thread count, prints the median time of
   ``ternary_linear`` (activation quantization included), the weight bytes per second and their share of the
   measured bandwidth, GOP/s (2*M*N*K / t) and the speed-up over numpy float32 matmul (BLAS, all cores) and
   over a numpy int8 -> int32 matmul (``xq.astype(int32) @ W_int32.T``, numpy's own integer loop).  Weights
   rotate over more than 64 MiB of copies, and more than twice the last-level cache, so that they come from
   memory, not cache, as in a real decode step; the numpy baselines rotate their weights too.
"""

from __future__ import annotations

import os

# Before numpy loads: OpenBLAS's spinning idle workers would stall the OpenMP kernels measured here on the same
# cores (a numpy baseline runs right before them); see bitnet_actor/__init__.py.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import last_level_cache_bytes, uncached_bytes

import kernels_cython as kc
from kernels_cython import reference as ref

if TYPE_CHECKING:
    from collections.abc import Callable

SHAPES = [
    ("2B-4T attn qkvo", 2560, 2560),
    ("2B-4T attn kv", 640, 2560),
    ("2B-4T ffn up/gate", 6912, 2560),
    ("2B-4T ffn down", 2560, 6912),
    ("700M attn", 1536, 1536),
    ("700M ffn up/gate", 4096, 1536),
    ("700M ffn down", 1536, 4096),
]
# distinct weight copies per shape: more than 64 MiB and than twice the last-level cache, so that the
# weights come from memory
ROTATE_BYTES = uncached_bytes(80 << 20)
bandwidth_bytes = uncached_bytes(256 << 20)  # each numpy copy's size


def median_time(fn: Callable[[int], object], reps: int, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn(i)`` over ``reps`` calls (more while under ``min_seconds``)."""
    fn(0)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    i = 1
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        i += 1
        if len(times) >= 20 * reps:
            break
    return statistics.median(times)


def paired_medians(
    fns: list[Callable[[int], object]], reps: list[int], rounds: int = 3, min_seconds: float = 0.0
) -> list[float]:
    """Median times of several functions measured in alternating rounds, so all see the same machine load.

    Args:
        fns: the functions, each called as ``fn(i)``.
        reps: calls per function in total (split over the rounds).
        rounds: how many times to alternate.
        min_seconds: per round and function, keep calling at least this long.

    Returns:
        One median per function.
    """
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn(0)  # warm-up
    for _ in range(rounds):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            count = 0
            while count < max(1, reps[j] // rounds) or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                fn(count + 1)
                times[j].append(time.perf_counter() - t0)
                count += 1
    return [statistics.median(t) for t in times]


def _copy_worker(nbytes: int, barriers: dict[int, Any], commands: Any, results: Any) -> None:
    """Copy ``nbytes`` with numpy on command, in step with the other workers (runs in its own process)."""
    src = np.ones(nbytes, dtype=np.uint8)  # (nbytes,)
    dst = np.ones(nbytes, dtype=np.uint8)  # (nbytes,), touched so the copies do not page-fault
    while (cmd := commands.get()) is not None:
        threads, reps = cmd
        for rep in range(reps):
            barriers[threads].wait()
            t0 = time.perf_counter()
            np.copyto(dst, src)
            results.put((rep, time.perf_counter() - t0))


class CopyBandwidth:
    """Memory bandwidth from large numpy copies, one per worker process running concurrently.

    Processes, not threads: concurrent ``np.copyto`` calls in threads of one process do not scale here.
    Reported as bytes copied per second (each byte read once and written once).
    """

    def __init__(self, thread_counts: list[int], nbytes: int = bandwidth_bytes) -> None:
        """Start ``max(thread_counts)`` workers, each with its own ``nbytes`` source and destination."""
        ctx = mp.get_context("spawn")
        self.nbytes = nbytes
        self.results: Any = ctx.Queue()
        self.commands: list[Any] = [ctx.Queue() for _ in range(max(thread_counts))]
        self.barriers = {t: ctx.Barrier(t) for t in thread_counts}  # kept alive while the workers run
        self.workers = [
            ctx.Process(target=_copy_worker, args=(nbytes, self.barriers, q, self.results), daemon=True)
            for q in self.commands
        ]
        for w in self.workers:
            w.start()

    def measure(self, threads: int, reps: int = 4) -> float:
        """Median over ``reps`` of (threads * nbytes) / (slowest worker's copy time)."""
        for q in self.commands[:threads]:
            q.put((threads, reps))
        slowest = [0.0] * reps
        for _ in range(threads * reps):
            rep, seconds = self.results.get(timeout=120)  # raises queue.Empty if a worker died
            slowest[rep] = max(slowest[rep], seconds)
        return statistics.median(threads * self.nbytes / t for t in slowest)

    def close(self) -> None:
        """Stop the workers."""
        for q in self.commands:
            q.put(None)
        for w in self.workers:
            w.join(timeout=10)


def check(isas: tuple[str, ...]) -> None:
    """Exact equality with the reference on every ISA, odd and real shapes, 1 and 2 threads."""
    rng = np.random.default_rng(0)
    cases = [(1, 7, 300), (5, 33, 513), (130, 17, 1000), (1, 2560, 2560), (3, 640, 6912), (128, 64, 1536)]
    for m, n, k in cases:
        w = ref.TernaryMatrix.from_codes(rng.integers(-1, 2, size=(n, k)).astype(np.int8), 0.5)
        x = rng.standard_normal((m, k)).astype(np.float32)  # (M, K)
        xq = rng.integers(-128, 128, size=(m, k)).astype(np.int8)  # (M, K)
        y_ref = ref.ternary_linear(x, w)
        acc_ref = ref.ternary_matmul_int32(xq, w)
        for isa in isas:
            for threads in (1, 2):
                assert np.array_equal(kc.ternary_linear(x, w, isa=isa, threads=threads), y_ref), (
                    isa,
                    m,
                    n,
                    k,
                )
                assert np.array_equal(kc.ternary_matmul_int32(xq, w, isa=isa, threads=threads), acc_ref)
    print(f"check: fast kernels equal the reference on {', '.join(isas)}")


def rotated(make: Callable[[], np.ndarray], nbytes: int) -> list[np.ndarray]:
    """Enough copies of ``make()`` to cover ROTATE_BYTES (at least 2)."""
    first = make()
    copies = max(2, -(-ROTATE_BYTES // max(nbytes, 1)))
    return [first] + [first.copy() for _ in range(copies - 1)]


def bench_shape(
    rng: np.random.Generator,
    name: str,
    n: int,
    k: int,
    batches: tuple[int, ...],
    thread_counts: list[int],
    isa: str,
    bandwidth: CopyBandwidth,
    quick: bool,
) -> None:
    """Print one table row per (batch, thread count) for the weight shape (N, K)."""
    codes = rng.integers(-1, 2, size=(n, k)).astype(np.int8)  # (N, K)
    w0 = ref.TernaryMatrix.from_codes(codes, 0.5)
    packs = rotated(lambda: np.array(w0.packed), w0.nbytes)  # (N, Kp/4) each
    mats = [ref.TernaryMatrix(p, k, 0.5) for p in packs]
    wf = rotated(lambda: codes.astype(np.float32) * np.float32(0.5), n * k * 4)  # (N, K) each
    wi = codes.astype(np.int32)  # (N, K)
    for m in batches:
        x = rng.standard_normal((m, k)).astype(np.float32)  # (M, K)
        xq, _ = ref.quantize_activations(x)  # (M, K)

        def np_f32(i: int, x: np.ndarray = x) -> object:
            return x @ wf[i % len(wf)].T

        def np_int(i: int, xq: np.ndarray = xq) -> object:
            return xq.astype(np.int32) @ wi.T

        t_int = median_time(np_int, 3 if m <= 4 else 1)
        for threads in thread_counts:
            reps = 400 if m <= 4 else 12
            if quick:
                reps //= 4

            def run(i: int, x: np.ndarray = x, threads: int = threads) -> object:
                return kc.ternary_linear(x, mats[i % len(mats)], isa=isa, threads=threads)

            # the machine is shared: re-measure the bandwidth right before each row, and time the kernel and
            # numpy float32 in alternating rounds so both see the same load
            bw = bandwidth.measure(threads)
            t, t_f32 = paired_medians([run, np_f32], [reps, 30 if m <= 4 else 6], min_seconds=0.1)
            wgbs = w0.nbytes / t
            print(
                f"{name:18} {n:>5}x{k:<5} {m:>4} {threads:>3} {t * 1e6:>8.1f}us {wgbs / 1e9:>7.1f}"
                f" {bw / 1e9:>6.1f} {100 * wgbs / bw:>4.0f}% {2 * m * n * k / t / 1e9:>7.1f}"
                f" {t_f32 * 1e6:>8.0f}us {t_f32 / t:>5.1f}x {t_int * 1e6:>8.0f}us {t_int / t:>5.0f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shapes")
    parser.add_argument("--isa", default=None, help="kernel path (default: the best available)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch", type=int, default=128, help="M of the GEMM rows")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    isa = args.isa or kc.default_isa()
    shapes = SHAPES[:2] if args.quick else SHAPES

    print(f"cpu cores: {os.cpu_count()}, kernel isa: {isa} (available: {', '.join(kc.available_isas())})")
    print(
        f"last-level cache {last_level_cache_bytes() >> 20} MiB: weights rotate over {ROTATE_BYTES >> 20} MiB, "
        f"copies of {bandwidth_bytes >> 20} MiB"
    )
    check(kc.available_isas())
    bandwidth = CopyBandwidth(thread_counts)
    for t in thread_counts:
        bw = bandwidth.measure(t)
        print(
            f"memory bandwidth with {t} thread(s): {bw / 1e9:.1f} GB/s copied ({2 * bw / 1e9:.1f} GB/s read + written)"
        )
    print()

    header = (
        f"{'shape':18} {'N x K':>11} {'M':>4} {'thr':>3} {'median':>10} {'wGB/s':>7} {'bw':>6} {'%bw':>5}"
        f" {'GOP/s':>7}"
        f" {'np f32':>10} {'x f32':>6} {'np int':>10} {'x int':>6}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(1)
    for name, n, k in shapes:
        bench_shape(rng, name, n, k, (1, 4, args.batch), thread_counts, isa, bandwidth, args.quick)
    bandwidth.close()
    print()
    print(
        "median: ternary_linear incl. activation quantization; wGB/s: packed weight bytes / median;"
        " bw: numpy copy bandwidth (GB/s copied, one process per thread) re-measured before each row;"
        " %bw: wGB/s / bw; np f32: numpy float32 matmul (BLAS, all"
        " cores); np int: numpy int8->int32 matmul (single thread)."
    )


if __name__ == "__main__":
    main()
