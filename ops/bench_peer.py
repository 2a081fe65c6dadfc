"""The C++ peer on this machine: llama.cpp and this engine on the same GGUF files.

Usage: ``python ops/bench_peer.py [--work DIR] [--shapes 700m,2b4t] [--threads 1,2] [--reps 5]``

BENCHMARKS.md measured the best C++ peers on another machine of this kind; this script measures one here, so
the ratio needs no assumption about the machine:

1. Builds llama.cpp's ``llama-bench`` and ``llama-quantize`` (CPU backend, ``-march=native``, OpenMP) from the
   llama-cpp-python source distribution on PyPI, which vendors llama.cpp (version pinned in ``SDIST``), into
   ``--work`` (default ``~/.cache/bitnet-actor/peer``); once, about 10 minutes on 2 cores (log in the work
   directory).  bitnet.cpp is not on a registry this machine reaches; llama.cpp's TQ2_0 is its ternary format.
2. Writes each shape (random weights, ``ops/bench_engine.py``'s writer: TQ2_0 ternary, BF16 embedding) with
   metadata llama.cpp loads too (architecture "bitnet", ``tokenizer.ggml.model`` "no_vocab"; llama.cpp's bitnet
   graph gates with SiLU, so the 2B-4T shape runs SiLU there and relu2 here: the same products), and a copy
   whose embedding / output matrix llama-quantize turns into Q6_K, as the published peer files have.
3. Correctness first: the engine's logits from the file against the in-memory model it was written from, its
   scales rounded to float16 as TQ2_0 keeps them (equal here); llama-bench must load the files.
4. llama-bench ``-p 128 -n 64`` on both files, and this engine on the BF16 file (prefill of 128 tokens,
   decode of 64 with the exact, q8 and q6 output layers), medians of ``--reps``, at each thread count; then
   the ratios.  Run it on an idle machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before numpy loads: see ops/bench_engine.py

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import _decode, _prefill, write_gguf_of

from bitnet_actor.engine import load_model, ops
from bitnet_actor.engine.layers import Linear
from bitnet_actor.engine.model import Model
from bitnet_actor.engine.synthetic import SHAPES, random_weights
from kernels_cython.reference import TernaryMatrix

SDIST = "llama-cpp-python==0.3.36"  # vendors ggml-org/llama.cpp 0c1e570
CMAKE_FLAGS = [
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]


def say(msg: str) -> None:
    print(msg, flush=True)


def build(work: Path) -> Path:
    """llama.cpp's binaries, built once into ``work``; returns their directory."""
    bindir = work / "build" / "bin"
    if (bindir / "llama-bench").exists() and (bindir / "llama-quantize").exists():
        return bindir
    work.mkdir(parents=True, exist_ok=True)
    dl = work / "dl"
    say(f"downloading {SDIST} (source) from PyPI ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(dl)],
        check=True,
    )
    (tarball,) = dl.glob("llama_cpp_python-*.tar.gz")
    src = work / "src"
    if not src.exists():
        with tarfile.open(tarball) as tf:
            tf.extractall(src, filter="data")
    (root,) = src.glob("llama_cpp_python-*")
    log = work / "build.log"
    say(f"building llama-bench and llama-quantize (about 10 minutes on 2 cores; log: {log}) ...")
    with log.open("w") as fh:
        cfg = ["cmake", "-S", str(root / "vendor" / "llama.cpp"), "-B", str(work / "build"), *CMAKE_FLAGS]
        subprocess.run(cfg, stdout=fh, stderr=subprocess.STDOUT, check=True)
        jobs = str(os.cpu_count() or 2)
        cmd = ["cmake", "--build", str(work / "build"), "--target", "llama-bench", "llama-quantize", "-j", jobs]
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return bindir


def files(work: Path, bindir: Path, shape: str) -> tuple[Path, Path]:
    """The shape's GGUF (BF16 embedding) and its Q6_K-embedding copy, written once."""
    bf16 = work / f"{shape}.gguf"
    q6k = work / f"{shape}.q6k.gguf"
    if not bf16.exists():
        say(f"{shape}: writing {bf16} ...")
        write_gguf_of(shape, bf16, for_llama_cpp=True)
    if not q6k.exists():
        cmd = [
            str(bindir / "llama-quantize"), "--allow-requantize", "--token-embedding-type", "q6_k",
            "--output-tensor-type", "q6_k", str(bf16), str(q6k), "TQ2_0", "2",
        ]  # fmt: skip
        subprocess.run(cmd, capture_output=True, check=True)
    return bf16, q6k


def _f16_scales(lin: Linear) -> Linear:
    """The layer with its ternary scales rounded to float16, as TQ2_0 stores them."""
    t = lin.ternary
    assert t is not None
    sc = t.scale
    rounded = float(np.float16(sc)) if isinstance(sc, float) else sc.astype(np.float16).astype(np.float32)
    return Linear(ternary=TernaryMatrix(t.packed, t.shape[1], rounded))


def check(shape: str, path: Path) -> None:
    """The file, read back by the engine, against the model it was written from (its scales rounded to float16
    as in the file: a random 24-layer model turns a 5e-4 change of every scale into ~8% of its logits)."""
    ids = list(range(1, 17))
    ours = load_model(path).logits(ids)
    w = random_weights(SHAPES[shape])
    w.layers = [
        dataclasses.replace(
            ly,
            qkv=[_f16_scales(lin) for lin in ly.qkv],
            o=_f16_scales(ly.o),
            gate_up=[_f16_scales(lin) for lin in ly.gate_up],
            down=_f16_scales(ly.down),
        )
        for ly in w.layers
    ]
    ref = Model(w).logits(ids)
    rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    agree = float((ours.argmax(1) == ref.argmax(1)).mean())
    say(f"correctness: {shape} GGUF vs the in-memory model: relative logit difference {rel:.1e}, top-1 {agree:.0%}")
    if rel > 1e-6 or agree < 1.0:
        sys.exit(f"FAILED: {path} does not hold the model it was written from")


def peer(bindir: Path, path: Path, threads: list[int], reps: int) -> dict[int, tuple[float, float]]:
    """llama-bench: threads -> (pp128, tg64) tok/s (means of ``reps``, as llama-bench reports)."""
    cmd = [
        str(bindir / "llama-bench"), "-m", str(path), "-p", "128", "-n", "64", "-r", str(reps),
        "-t", ",".join(map(str, threads)), "-o", "json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"FAILED: llama-bench could not run {path}:\n{proc.stderr[-2000:]}")
    out: dict[int, list[float]] = {}
    for row in json.loads(proc.stdout):
        t = int(row["n_threads"])
        slot = 0 if int(row["n_prompt"]) else 1
        out.setdefault(t, [0.0, 0.0])[slot] = float(row["avg_ts"])
    return {t: (v[0], v[1]) for t, v in out.items()}


def ours(path: Path, threads: list[int], reps: int) -> dict[int, dict[str, float]]:
    """This engine on the file: threads -> prefill and decode tok/s (medians of ``reps``)."""
    model = load_model(path)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 30000, 128)]
    _prefill(model, prompt)  # touches every page
    res: dict[int, dict[str, float]] = {}
    for nt in threads:
        ops.set_num_threads(nt)
        _prefill(model, prompt[:16])
        f = {"prefill": statistics.median(_prefill(model, prompt) for _ in range(reps))}
        for head in ("exact", "q8", "q6"):
            model.set_output_layer(head)
            f[head] = statistics.median(_decode(model, 64)[0] for _ in range(reps))
        model.set_output_layer("exact")
        res[nt] = f
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "bitnet-actor" / "peer")
    p.add_argument("--shapes", default="700m,2b4t")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    say(f"load average before: {os.getloadavg()}")
    bindir = build(args.work)
    rows = []
    for shape in args.shapes.split(","):
        bf16, q6k = files(args.work, bindir, shape)
        check(shape, bf16)
        t0 = time.perf_counter()
        rows.append((shape, peer(bindir, bf16, threads, args.reps), peer(bindir, q6k, threads, args.reps)))
        rows[-1] += (ours(bf16, threads, args.reps),)
        say(f"{shape}: measured in {time.perf_counter() - t0:.0f} s")
    say("\ntok/s; llama.cpp: llama-bench means; ours: medians; peer = llama.cpp TQ2_0 with its Q6_K output matrix")
    say(
        f"{'shape':6} {'thr':>3} | {'llama.cpp BF16':>15} {'llama.cpp Q6_K':>15} | {'ours pp128':>10} "
        f"{'tg exact':>8} {'tg q8':>6} {'tg q6':>6} | {'pp x':>5} {'tg q6 x':>7} {'tg exact x BF16':>15}"
    )
    for shape, pb, pq, us in rows:
        for nt in threads:
            (ppb, tgb), (ppq, tgq), u = pb[nt], pq[nt], us[nt]
            say(
                f"{shape:6} {nt:>3} | {ppb:6.1f} / {tgb:6.1f} {ppq:6.1f} / {tgq:6.1f} | {u['prefill']:10.1f} "
                f"{u['exact']:8.1f} {u['q8']:6.1f} {u['q6']:6.1f} | {u['prefill'] / ppq:4.2f}x "
                f"{u['q6'] / tgq:6.2f}x {u['exact'] / tgb:14.2f}x"
            )
    say(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
