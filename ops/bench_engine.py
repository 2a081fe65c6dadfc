"""Benchmark the model engine on random models with real shapes.

Usage: ``python ops/bench_engine.py [--quick] [--shapes 700m,2b4t] [--threads 1,2] [--reps 3]``

1. Correctness first, on a small random model: the compiled path (fast kernels + compiled ops) against the
   numpy reference path (relative logit difference), and greedy output of a sequence alone against the same
   sequence inside a batch (must be identical).  Aborts on failure.
2. This machine's memory bandwidth (concurrent numpy copies, one per thread; bytes copied per second).
3. Per shape, in a child process of its own (so its peak RSS is its own): random models with the shapes of
   1bitLLM bitnet_b1_58-large (700M class: hidden 1536, 24 layers, 16 heads, FFN 4096, vocab 32002, tied)
   and BitNet-b1.58-2B-4T (hidden 2560, 30 layers, 20 / 5 KV heads, FFN 6912, vocab 128256, tied); bf16
   embedding as in the published checkpoints.  For each thread count: prefill tokens/s of a 128-token
   prompt, decode tokens/s over 64 and 128 generated tokens, the time per decoded token outside the ternary
   and dense-product kernels and outside every compiled op ("python"), and the same decode with the int8
   (q8) and 6-bit (q6) output layers, and with q8 again after a 1024-token prompt with float32 and with
   float16 KV caches ("q8 @1k", "f16kv"); then the logit difference the quantized output layers cause, bytes
   read per token and the bandwidth floor (bandwidth / bytes per token).  Figures are medians of ``--reps`` runs.

The machine is shared: the load average is printed before and after; figures taken under load are noisy.
"""

from __future__ import annotations

import os

# Before numpy loads: OpenBLAS's spinning idle workers would stall the OpenMP kernels measured here on the same
# cores (a numpy baseline runs right before them); see bitnet_actor/__init__.py.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import uncached_bytes

from bitnet_actor.engine import SamplingParams, ops
from bitnet_actor.engine.model import Model
from bitnet_actor.engine.synthetic import SHAPES, random_weights

KERNELS = ("ternary_linear", "dense_matmul")
OPS = (*KERNELS, "attn_block", "add_rmsnorm", "glu_norm", "rmsnorm", "run_layers")
# what the per-token breakdown reports: the ops above, with the compiled layer loop's time split into its
# ternary products, attention and "layer ops" (norms, residual adds, gated activation)
REPORT = (*KERNELS, "attn_block", "layer ops", "add_rmsnorm", "glu_norm", "rmsnorm")


def _proc_status(key: str) -> int:
    """A size from /proc/self/status in bytes (VmHWM: this process's peak RSS, reset by exec; VmRSS: now)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def copy_bandwidth(threads: int, nbytes: int = uncached_bytes(256 << 20), reps: int = 5) -> float:
    """Bytes copied per second by ``threads`` concurrent numpy copies."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    part = nbytes // threads

    def run(i: int) -> None:
        np.copyto(dst[i * part : (i + 1) * part], src[i * part : (i + 1) * part])

    best = float("inf")
    for _ in range(reps):
        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


# ------------------------------------------------------------------------------------------------ correctness


def check_correctness() -> None:
    """Compiled ops vs numpy on a forward's real inputs, batch vs alone, and transformers when installed."""
    cfg = dataclasses.replace(
        SHAPES["2b4t"], hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=64,
        intermediate_size=768, vocab_size=1000, context_length=256,
    )  # fmt: skip
    model = Model(random_weights(cfg, seed=1))
    ids = list(np.random.default_rng(2).integers(0, 1000, 40))
    if not model.compiled_layers:
        sys.exit("FAILED: the compiled layer loop does not take the benchmark's model")
    compiled = model.logits(ids)
    model.set_compiled_layers(False)
    if not np.array_equal(model.logits(ids), compiled):
        sys.exit("FAILED: the compiled layer loop differs from the per-op path")
    print("correctness: compiled layer loop == per-op path (bit for bit): ok")
    # every op call of a per-op forward, replayed through the numpy reference path on the same inputs
    calls: list[tuple[str, tuple[Any, ...], Any]] = []
    originals = {name: getattr(ops, name) for name in OPS}

    def capture(name: str, fn: Any) -> Any:
        def wrapped(*a: Any) -> Any:
            before = tuple(x.copy() if isinstance(x, np.ndarray) else x for x in a)
            r = fn(*a)
            after = r.copy() if isinstance(r, np.ndarray) else tuple(x.copy() for x in a if isinstance(x, np.ndarray))
            calls.append((name, before, after))
            return r

        return wrapped

    for name, fn in originals.items():
        setattr(ops, name, capture(name, fn))
    try:
        model.logits(ids)
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
        model.set_compiled_layers(True)
    worst: dict[str, float] = {}
    with ops.numpy_reference():
        for name, args, fast in calls:
            a = tuple(x.copy() if isinstance(x, np.ndarray) else x for x in args)
            r = originals[name](*a)
            ref = r if isinstance(r, np.ndarray) else tuple(x for x in a if isinstance(x, np.ndarray))
            at = 5 if name == "attn_block" else -1  # in-place ops: their `out` among the array arguments
            fa = fast if isinstance(fast, np.ndarray) else fast[at]
            ra = ref if isinstance(ref, np.ndarray) else ref[at]
            err = float(np.abs(fa - ra).max() / max(float(np.abs(ra).max()), 1e-30))
            if name == "ternary_linear" and err != 0.0:
                sys.exit(f"FAILED: the fast ternary kernel differs from the reference ({err:.2e})")
            worst[name] = max(worst.get(name, 0.0), err)
    print(
        "correctness: compiled vs numpy reference on a forward's inputs (max error / max value): "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )
    if max(worst.values()) > 1e-5:
        sys.exit("FAILED: a compiled op differs from the reference")
    prompts = [ids[:5], ids[:23], ids[3:4]]
    alone = [list(model.generate(p, max_tokens=16, temperature=0, ignore_eos=True)) for p in prompts]
    seqs = [model.new_sequence(p, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)) for p in prompts]
    while not all(s.finished for s in seqs):
        model.step(seqs, prefill_chunk=8)
    if [s.output_ids for s in seqs] != alone:
        sys.exit("FAILED: greedy output differs between alone and batched")
    print("correctness: greedy alone == batched: ok")
    check_against_transformers()


def check_against_transformers() -> None:
    """The compiled engine against HF transformers on a tiny checkpoint (skipped without transformers)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    try:
        import tempfile

        import transformers

        from bitnet_actor.engine import load_model
        from tests.engine.hf_models import load_oracle, make_checkpoint, oracle_greedy, oracle_logits
    except ImportError as exc:
        print(f"correctness: transformers oracle skipped ({exc})")
        return
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "m")
        oracle = load_oracle(ckpt)
        model = load_model(ckpt)
        ids = list(range(3, 40))
        ours, theirs = model.logits(ids), oracle_logits(oracle, ids)
        r = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
        same = list(model.generate(ids[:8], max_tokens=32, temperature=0)) == oracle_greedy(oracle, ids[:8], 32)
    print(
        f"correctness: vs transformers: per-position relative logit error median {np.median(r):.1e}, "
        f"max {r.max():.1e}; 32 greedy tokens identical: {same}"
    )
    if np.percentile(r, 90) > 1e-5 or not same:
        sys.exit("FAILED: the engine differs from transformers")


# ------------------------------------------------------------------------------------------------ child


class _Timer:
    def __init__(self) -> None:
        self.acc: Counter[str] = Counter()
        self.orig = {name: getattr(ops, name) for name in OPS}

    def install(self) -> None:
        for name, fn in self.orig.items():

            def timed(*a: Any, _fn: Any = fn, _name: str = name, **k: Any) -> Any:
                t = time.perf_counter()
                r = _fn(*a, **k)
                self.acc[_name] += time.perf_counter() - t
                return r

            setattr(ops, name, timed)

    def remove(self) -> None:
        for name, fn in self.orig.items():
            setattr(ops, name, fn)


def _prefill(model: Model, prompt: list[int]) -> float:
    seq = model.new_sequence(prompt, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    t = time.perf_counter()
    model.step([seq], prefill_chunk=len(prompt))
    dt = time.perf_counter() - t
    seq.release()
    return len(prompt) / dt


def _decode(model: Model, n: int, timer: _Timer | None = None, context: int = 4) -> tuple[float, dict[str, float]]:
    prompt = [1 + i % 1000 for i in range(context)]
    seq = model.new_sequence(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    model.step([seq], prefill_chunk=context)  # prefill + first token
    if timer is not None:
        timer.acc.clear()
        timer.install()
        model.op_times = np.zeros(3)
    t = time.perf_counter()
    steps = 0
    try:
        while not seq.finished:
            model.step([seq])
            steps += 1
    finally:
        if timer is not None:
            timer.remove()
    dt = time.perf_counter() - t
    per: dict[str, float] = {"total": dt / steps}
    if timer is not None:
        per.update({k: v / steps for k, v in timer.acc.items()})
        # Python: everything outside the ops (the compiled layer loop counts as one op)
        per["python"] = per["total"] - sum(timer.acc.values()) / steps
        split = model.op_times
        model.op_times = None
        if split is not None and per.pop("run_layers", 0.0):
            per["ternary_linear"] = per.get("ternary_linear", 0.0) + split[0] / steps
            per["attn_block"] = per.get("attn_block", 0.0) + split[1] / steps
            per["layer ops"] = split[2] / steps
    return steps / dt, per


def thin_overhead(shape: str, reps: int) -> float:
    """Seconds per decoded token of a model with the shape's depth and tiny widths (kernels ~free): an
    upper bound of the per-token cost outside the kernels that does not scale with the model's width."""
    cfg = dataclasses.replace(
        SHAPES[shape],
        hidden_size=256,
        num_heads=4,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=256,
        vocab_size=256,
    )
    model = Model(random_weights(cfg))
    ops.set_num_threads(1)
    _decode(model, 16)
    return statistics.median(1 / _decode(model, 64)[0] for _ in range(max(reps, 3)))


def child(shape: str, threads: list[int], reps: int) -> dict[str, Any]:
    """Measure one shape; returns the figures."""
    thin = thin_overhead(shape, reps)
    t0 = time.perf_counter()
    model = Model(random_weights(SHAPES[shape]))
    out: dict[str, Any] = {"shape": shape, "build_s": time.perf_counter() - t0, "by_threads": {}}
    out["thin_ms"] = thin * 1e3
    out["bytes_per_token"] = model.bytes_per_token
    out["nbytes"] = model.nbytes
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 30000, 128)]
    _prefill(model, prompt)  # warm-up: touches every page
    for nt in threads:
        ops.set_num_threads(nt)
        _prefill(model, prompt[:16])
        pre = statistics.median(_prefill(model, prompt) for _ in range(reps))
        d64 = statistics.median(_decode(model, 64)[0] for _ in range(reps))
        runs = [_decode(model, 128, _Timer()) for _ in range(reps)]
        d128 = statistics.median(r[0] for r in runs)
        per = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in (*REPORT, "total", "python")}
        outside = per["total"] - sum(per[k] for k in KERNELS)
        python = per["python"]
        model.set_output_layer("q6")
        dq6 = statistics.median(_decode(model, 64)[0] for _ in range(reps))
        model.set_output_layer("q8")
        dq8 = statistics.median(_decode(model, 64)[0] for _ in range(reps))
        # after a 1024-token prompt, with float32 and float16 KV caches (the cache is then ~1/3 of the bytes)
        long32 = statistics.median(_decode(model, 64, context=1024)[0] for _ in range(reps))
        model.set_kv_cache("f16")
        long16 = statistics.median(_decode(model, 64, context=1024)[0] for _ in range(reps))
        model.set_kv_cache("f32")
        model.set_output_layer("exact")
        out["by_threads"][nt] = {
            "prefill": pre,
            "decode64": d64,
            "decode128": d128,
            "decode64_q8": dq8,
            "decode64_q6": dq6,
            "decode64_q8_1k": long32,
            "decode64_q8_1k_f16kv": long16,
            "outside_kernels_ms": outside * 1e3,
            "python_ms": python * 1e3,
            "ops_ms": {k: per[k] * 1e3 for k in REPORT if per[k]},
        }
    ids = prompt[:32]
    exact = model.logits(ids)
    for head in ("q8", "q6"):
        model.set_output_layer(head)
        got = model.logits(ids)
        out[f"bytes_per_token_{head}"] = model.bytes_per_token
        out[f"{head}_rel_diff"] = float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
        out[f"{head}_top1_agree"] = float((np.argmax(got, 1) == np.argmax(exact, 1)).mean())
        out[f"{head}_max_abs"] = float(np.abs(got - exact).max())
    model.set_output_layer("exact")
    out["peak_rss"] = _proc_status("VmHWM")
    return out


# ------------------------------------------------------------------------------------------------ main


def write_gguf_of(shape: str, path: Path, *, for_llama_cpp: bool = False) -> None:
    """Write a random model of ``shape`` as a GGUF file (TQ2_0 ternary, BF16 embedding).

    ``for_llama_cpp``: metadata upstream llama.cpp loads as well: architecture "bitnet" (it has no
    "bitnet-b1.58"; its bitnet graph gates with SiLU whatever the file says) and ``tokenizer.ggml.model =
    "no_vocab"`` (it then makes dummy tokens for the vocabulary size; this engine ignores the key).
    """
    from bitnet_actor.engine.gguf_io import write_gguf
    from kernels_cython.reference import to_tq2_0

    w = random_weights(SHAPES[shape])
    cfg = w.config
    tensors: dict[str, tuple[str, tuple[int, ...], Any]] = {
        "token_embd.weight": ("BF16", w.embed.shape, w.embed.data),
        "output_norm.weight": ("F32", (cfg.hidden_size,), w.final_norm),
    }
    qd, kvd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for i, layer in enumerate(w.layers):
        (qkv,), (gu,) = layer.qkv, layer.gate_up
        assert qkv.ternary is not None
        assert gu.ternary is not None
        from kernels_cython.reference import TernaryMatrix

        def rows(m: TernaryMatrix, r0: int, r1: int) -> TernaryMatrix:
            sc = m.row_scale[r0] if m.row_scale is not None else m.scale
            return TernaryMatrix(np.ascontiguousarray(m.packed[r0:r1]), m.shape[1], sc)

        parts = {
            "attn_q": rows(qkv.ternary, 0, qd),
            "attn_k": rows(qkv.ternary, qd, qd + kvd),
            "attn_v": rows(qkv.ternary, qd + kvd, qd + 2 * kvd),
            "ffn_gate": rows(gu.ternary, 0, cfg.intermediate_size),
            "ffn_up": rows(gu.ternary, cfg.intermediate_size, 2 * cfg.intermediate_size),
        }
        assert layer.o.ternary is not None
        assert layer.down.ternary is not None
        parts["attn_output"] = layer.o.ternary
        parts["ffn_down"] = layer.down.ternary
        for name, m in parts.items():
            tensors[f"blk.{i}.{name}.weight"] = ("TQ2_0", m.shape, to_tq2_0(m))
        tensors[f"blk.{i}.attn_norm.weight"] = ("F32", (cfg.hidden_size,), layer.attn_norm)
        tensors[f"blk.{i}.ffn_norm.weight"] = ("F32", (cfg.hidden_size,), layer.ffn_norm)
        if layer.attn_sub_norm is not None and layer.ffn_sub_norm is not None:
            tensors[f"blk.{i}.attn_sub_norm.weight"] = ("F32", (qd,), layer.attn_sub_norm)
            tensors[f"blk.{i}.ffn_sub_norm.weight"] = ("F32", (cfg.intermediate_size,), layer.ffn_sub_norm)
    meta = cfg.to_gguf_metadata()
    if for_llama_cpp:
        arch = meta["general.architecture"]
        meta = {(f"bitnet.{k[len(arch) + 1 :]}" if k.startswith(arch + ".") else k): v for k, v in meta.items()}
        meta["general.architecture"] = "bitnet"
        meta["tokenizer.ggml.model"] = "no_vocab"
    write_gguf(path, meta, tensors)


def load_child(path: Path) -> dict[str, Any]:
    """Load a GGUF file with the engine's loader; time and peak RSS."""
    from bitnet_actor.engine import load_model

    base = _proc_status("VmRSS")
    t = time.perf_counter()
    model = load_model(path)
    dt = time.perf_counter() - t
    model.logits([1, 2, 3])
    return {
        "load_s": dt,
        "peak_rss": _proc_status("VmHWM"),
        "rss_before": base,
        "nbytes": model.nbytes,
        "file_bytes": path.stat().st_size,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one repetition, 700M shape only")
    p.add_argument("--shapes", default="700m,2b4t")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-load-test", action="store_true", help="skip writing and loading GGUF files")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--write", help=argparse.SUPPRESS)
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.child:
        print(json.dumps(child(args.child, threads, args.reps)))
        return
    if args.write:
        shape, path = args.write.split(":", 1)
        write_gguf_of(shape, Path(path))
        return
    if args.load:
        print(json.dumps(load_child(Path(args.load))))
        return
    reps = 1 if args.quick else args.reps
    shapes = ["700m"] if args.quick else args.shapes.split(",")
    print(f"load average before: {os.getloadavg()}; fast kernels {ops.FAST_KERNELS}, compiled ops {ops.FAST_OPS}")
    check_correctness()
    bw = {nt: copy_bandwidth(nt) for nt in threads}
    print("bandwidth (copy): " + ", ".join(f"{nt} thread(s) {b / 1e9:.1f} GB/s" for nt, b in bw.items()))
    print("\ntok/s (medians); floor = bandwidth / bytes per token; out-kern, python: ms per decoded token")
    print(
        f"{'shape':6} {'thr':>3} {'prefill':>8} {'dec64':>7} {'dec128':>7} {'dec64 q8':>8} {'q6':>6} {'floor':>6} "
        f"{'floor q8':>8} {'%floor':>6} {'out-kern':>8} {'python':>7} {'MB/tok':>7} {'RSS MB':>7} "
        f"{'q8 @1k':>7} {'f16kv':>7}",
        flush=True,
    )
    results = []
    for shape in shapes:
        cmd = [sys.executable, __file__, "--child", shape, "--threads", args.threads, "--reps", str(reps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{shape}: child failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        for nt, f in r["by_threads"].items():
            floor = bw[int(nt)] / r["bytes_per_token"]
            floor_q8 = bw[int(nt)] / r["bytes_per_token_q8"]
            print(
                f"{r['shape']:6} {nt:>3} {f['prefill']:8.1f} {f['decode64']:7.1f} {f['decode128']:7.1f} "
                f"{f['decode64_q8']:8.1f} {f['decode64_q6']:6.1f} {floor:6.1f} {floor_q8:8.1f} "
                f"{100 * f['decode64'] / floor:5.0f}% "
                f"{f['outside_kernels_ms']:8.2f} {f['python_ms']:7.2f} {r['bytes_per_token'] / 1e6:7.1f} "
                f"{r['peak_rss'] / 1e6:7.0f} {f['decode64_q8_1k']:7.1f} {f['decode64_q8_1k_f16kv']:7.1f}",
                flush=True,
            )
    print()
    for r in results:
        ops_ms = r["by_threads"][str(max(threads))]["ops_ms"]
        print(
            f"{r['shape']}: per-token time of the same depth with tiny widths (Python + op dispatch, "
            f"1 thread) {r['thin_ms']:.2f} ms; build {r['build_s']:.1f} s, weights {r['nbytes'] / 1e6:.0f} MB, "
            "bytes/token "
            f"{r['bytes_per_token'] / 1e6:.0f} MB exact / {r['bytes_per_token_q8'] / 1e6:.0f} MB q8; q8 output "
            f"layer: relative logit difference {r['q8_rel_diff']:.2e}, max abs {r['q8_max_abs']:.3f}, "
            f"top-1 agreement {100 * r['q8_top1_agree']:.0f}%; q6 output layer ({r['bytes_per_token_q6'] / 1e6:.0f} "
            f"MB/token): relative logit difference {r['q6_rel_diff']:.2e}, top-1 agreement "
            f"{100 * r['q6_top1_agree']:.0f}%; ms/token at {max(threads)} threads: "
            + ", ".join(f"{k} {v:.2f}" for k, v in ops_ms.items())
        )
    if not args.no_load_test:
        import tempfile

        for shape in shapes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{shape}.gguf"
                subprocess.run([sys.executable, __file__, "--write", f"{shape}:{path}"], check=True)
                proc = subprocess.run(
                    [sys.executable, __file__, "--load", str(path)], capture_output=True, text=True, check=True
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"{shape}: load of a {r['file_bytes'] / 1e6:.0f} MB GGUF (TQ2_0 + BF16 embedding): "
                    f"{r['load_s']:.1f} s, peak RSS {r['peak_rss'] / 1e6:.0f} MB "
                    f"(interpreter + imports before loading {r['rss_before'] / 1e6:.0f} MB; engine holds "
                    f"{r['nbytes'] / 1e6:.0f} MB, the BF16 embedding memory-mapped)"
                )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
