"""Measure the output layer modes (exact, q8, q6): how far the quantized ones move the logits, how much faster.

Usage: ``python ops/bench_output_layer.py [--quick] [--reps 5] [--prompts 4] [--tokens 64] [--no-2b-model]``

1. Correctness first, per model: the exact output layer on the model's real final hidden states against a
   float64 product of the stored weights; the q8 and q6 kernels against their integer references
   (``kernels_cython/reference_dense.py``); on the oracle models, the engine's exact logits against
   transformers (the bound of ``tests/engine/test_oracle.py``).  Aborts on failure.
2. Quality, per model and mode, against exact in the same run: teacher-forced top-1 agreement (the share of
   positions whose argmax equals exact's), max and mean |logit - exact logit|, the largest of those per
   position divided by that position's exact logit range (max - min), and greedy agreement: N prompts x T
   tokens, how many are identical and the first position where one differs.  Models: the tests' oracle
   checkpoints (``tests/engine/hf_models.py``, written by transformers; random token ids), the bundled demo
   model over real text (a fixed English and code passage below, not seen in training, and the docstrings of
   the running interpreter's ``os.py``, part of its training corpus), and the BitNet-b1.58-2B-4T output
   shape (random bf16 weights and random hidden states: logit error only, the top-1 of random logits says
   little).
3. Speed: the output-layer product alone on BitNet-b1.58-2B-4T output shapes (vocab 128256 x hidden 2560,
   random bf16 weights, stored as the tied embedding is; one token, as in decode), and decode tokens/s end
   to end on the demo model and (not with ``--quick`` / ``--no-2b-model``) on a random model of the 2B-4T
   shape.  Medians of ``--reps`` runs; ratios against exact measured in the same run.

``--quick`` (for a test): fewer tokens and repetitions, 1/8 of the 2B-4T vocabulary, no 2B-4T model.
The machine may be shared: the load average is printed before and after; figures taken under load are noisy.
"""

from __future__ import annotations

import os

# Before numpy loads: OpenBLAS's spinning idle workers would stall the OpenMP kernels (see bitnet_actor/__init__.py).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import ast
import dataclasses
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bitnet_actor.engine import SamplingParams, load_model, ops
from bitnet_actor.engine.layers import DenseMatrix
from bitnet_actor.engine.model import Model
from bitnet_actor.engine.synthetic import SHAPES, random_weights
from kernels_cython import reference_dense as dref

if TYPE_CHECKING:
    from collections.abc import Iterator

MODES = ("exact", "q8", "q6")
ORACLES = {  # as tests/engine/conftest.py builds them (the safetensors ones)
    "bitnet-auto-offline": {"arch": "bitnet", "linear_class": "autobitlinear", "mode": "offline"},
    "bitnet-bitlinear-offline": {"arch": "bitnet", "linear_class": "bitlinear", "mode": "offline", "seed": 1},
    "bitnet-auto-online": {"arch": "bitnet", "linear_class": "autobitlinear", "mode": "online", "tie": False},
    "llama-bitlinear-offline": {
        "arch": "llama",
        "linear_class": "bitlinear",
        "mode": "offline",
        "tie": False,
        "seed": 2,
        "modules_to_not_convert": ["lm_head", "model.layers.1.mlp.down_proj"],
    },
}
# Real text the demo model did not train on: English prose and Python code in the style of its corpus.
TEXT = '''Return a list of the entries in the directory given by path. The list is in arbitrary order, and
does not include the special entries '.' and '..' even if they are present in the directory. If a file is
removed from or added to the directory during the call of this function, whether a name for that file is
included is unspecified. This function is useful when you need the names only; when you also need the file
type or the size, a scandir() call is faster, because the operating system often gives that information
with the name.

The module keeps a cache of compiled patterns. Most applications do not need to call compile() themselves:
the functions at module level compile the pattern they are given and keep it for the next call. A program
that uses many different patterns in a loop may still gain from compiling them once, outside the loop.

Raise ValueError if the value is not a valid number, and TypeError if it is not a string or a number at
all. The default is used when the argument is omitted or None.

def read_config(path, *, encoding="utf-8"):
    """Read a configuration file and return a dictionary of its sections."""
    sections = {}
    current = None
    with open(path, encoding=encoding) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], {})
            elif current is not None and "=" in line:
                key, value = line.split("=", 1)
                current[key.strip()] = value.strip()
    return sections


class Timer:
    """A context manager that measures the time spent inside its block."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start
        return False
'''
DEMO_PROMPTS = (
    "Return a list of",
    "The os module",
    "This function",
    "def __init__(self",
    "If the file does not exist,",
    "Raise ValueError if",
    "The default is",
    "Return True if",
)


def fail(msg: str) -> None:
    """Abort: a correctness check failed."""
    sys.exit(f"FAILED: {msg}")


# ------------------------------------------------------------------------------------------------ measures


@dataclasses.dataclass
class Quality:
    """One mode against exact on one model."""

    positions: int = 0
    top1_same: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    count_abs: int = 0
    max_rel_range: float = 0.0
    greedy_same: int = 0
    greedy_total: int = 0
    first_div: int | None = None  # the earliest position where a greedy continuation differs

    def add_logits(self, got: npt.NDArray[np.float32], exact: npt.NDArray[np.float32]) -> None:
        """Fold in teacher-forced logits (T, V) of this mode and of exact."""
        d = np.abs(got.astype(np.float64) - exact)
        rng = exact.max(axis=1).astype(np.float64) - exact.min(axis=1)
        self.positions += got.shape[0]
        self.top1_same += int((got.argmax(axis=1) == exact.argmax(axis=1)).sum())
        self.max_abs = max(self.max_abs, float(d.max()))
        self.sum_abs += float(d.sum())
        self.count_abs += d.size
        self.max_rel_range = max(self.max_rel_range, float((d.max(axis=1) / np.maximum(rng, 1e-30)).max()))

    def add_greedy(self, got: list[int], exact: list[int]) -> None:
        """Fold in one greedy continuation of this mode and of exact."""
        self.greedy_total += 1
        if got == exact:
            self.greedy_same += 1
            return
        pos = next((i for i, (a, b) in enumerate(zip(got, exact, strict=False)) if a != b), min(len(got), len(exact)))
        self.first_div = pos if self.first_div is None else min(self.first_div, pos)

    @property
    def top1(self) -> float:
        """Teacher-forced top-1 agreement."""
        return self.top1_same / max(self.positions, 1)

    @property
    def mean_abs(self) -> float:
        """Mean |logit difference|."""
        return self.sum_abs / max(self.count_abs, 1)


@contextmanager
def captured_head_inputs(model: Model) -> Iterator[list[npt.NDArray[np.float32]]]:
    """Collect the inputs of the output layer (the final normed hidden states) while the block runs."""
    got: list[npt.NDArray[np.float32]] = []
    original = ops.dense_matmul
    heads = {id(model.weights.lm_head)}

    def spy(x: npt.NDArray[np.float32], m: DenseMatrix) -> npt.NDArray[np.float32]:
        if id(m) in heads:
            got.append(x.copy())
        return original(x, m)

    ops.dense_matmul = spy  # type: ignore[assignment]
    try:
        yield got
    finally:
        ops.dense_matmul = original  # type: ignore[assignment]


def rel_err(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """``max|a - b| / max|b|``."""
    return float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(b).max()), 1e-30))


def check_head(name: str, head: DenseMatrix, q8: DenseMatrix, q6: DenseMatrix, x: npt.NDArray[np.float32]) -> None:
    """The exact output layer against float64, the quantized kernels against their integer references."""
    w64 = head.rows_f32(0, head.shape[0]).astype(np.float64)  # (V, K)
    exact64 = x.astype(np.float64) @ w64.T  # (M, V): float32 products are exact in float64
    e = rel_err(ops.dense_matmul(x, head), exact64)
    assert q8.scales is not None
    assert q6.scales is not None
    e8 = rel_err(ops.dense_matmul(x, q8), dref.dense_matmul_q8_ref(x, q8.data, q8.scales, q8.cols))
    e6 = rel_err(ops.dense_matmul(x, q6), dref.dense_matmul_q6_ref(x, q6.data, q6.scales, q6.cols))
    print(
        f"correctness: {name}: exact output layer vs float64 {e:.1e}; q8 kernel vs its reference {e8:.1e}; "
        f"q6 kernel vs its reference {e6:.1e} (max error / max value)",
        flush=True,
    )
    if max(e, e8, e6) > 1e-5:
        fail(f"{name}: an output-layer kernel differs from its reference")


def teacher_forced(model: Model, windows: list[list[int]], qual: dict[str, Quality], name: str) -> None:
    """Logits of every window in every mode; the exact output layer checked first."""
    exact_logits = []
    hidden = []
    model.set_output_layer("exact")
    for w in windows:
        with captured_head_inputs(model) as xs:
            exact_logits.append(model.logits(w))
        hidden.append(np.concatenate(xs)[-len(w) :])
    x = np.ascontiguousarray(np.concatenate(hidden)[:512])
    head = model.weights.lm_head  # quantized below as Model.set_output_layer does
    check_head(name, head, DenseMatrix.quantize_q8(head), DenseMatrix.quantize_q6(head), x)
    for mode in MODES:
        model.set_output_layer(mode)
        for w, ex in zip(windows, exact_logits, strict=True):
            qual[mode].add_logits(model.logits(w), ex)
    model.set_output_layer("exact")


def greedy(model: Model, prompts: list[list[int]], tokens: int, qual: dict[str, Quality]) -> None:
    """Greedy continuations of every prompt in every mode against exact's."""
    ref: list[list[int]] = []
    for mode in MODES:
        model.set_output_layer(mode)
        for i, p in enumerate(prompts):
            out = list(model.generate(p, max_tokens=tokens, temperature=0, ignore_eos=True))
            if mode == "exact":
                ref.append(out)
            qual[mode].add_greedy(out, ref[i])
    model.set_output_layer("exact")


def decode_tps(model: Model, tokens: int, reps: int, prompt: list[int]) -> dict[str, float]:
    """Median decode tokens/s per mode (prefill and the first token not counted); modes interleaved per
    repetition so a change of load hits all of them alike."""
    runs: dict[str, list[float]] = {m: [] for m in MODES}
    for m in MODES:  # warm-up; makes the quantized copies
        model.set_output_layer(m)
        list(model.generate(prompt, max_tokens=4, temperature=0, ignore_eos=True))
    for _ in range(reps):
        for m in MODES:
            model.set_output_layer(m)
            seq = model.new_sequence(prompt, SamplingParams(max_tokens=tokens + 1, temperature=0, ignore_eos=True))
            model.step([seq], prefill_chunk=len(prompt))  # prefill + first token
            t = time.perf_counter()
            steps = 0
            while not seq.finished:
                model.step([seq])
                steps += 1
            runs[m].append(steps / (time.perf_counter() - t))
            seq.release()
    model.set_output_layer("exact")
    return {m: statistics.median(v) for m, v in runs.items()}


def matmul_tps(heads: dict[str, DenseMatrix], x: npt.NDArray[np.float32], reps: int, calls: int) -> dict[str, float]:
    """Median output-layer products per second per mode (one token), modes interleaved per repetition."""
    runs: dict[str, list[float]] = {m: [] for m in heads}
    for h in heads.values():
        ops.dense_matmul(x, h)  # warm-up
    for _ in range(reps):
        for m, h in heads.items():
            t = time.perf_counter()
            for _ in range(calls):
                ops.dense_matmul(x, h)
            runs[m].append(calls / (time.perf_counter() - t))
    return {m: statistics.median(v) for m, v in runs.items()}


# ------------------------------------------------------------------------------------------------ models


def real_text_windows(model: Model, limit: int, window: int) -> tuple[list[list[int]], str]:
    """Token windows of the fixed text and of os.py's docstrings (training text), at most ``limit`` tokens."""
    tok = model.tokenizer
    ids = list(tok.encode(TEXT))
    source = f"the fixed passage ({len(ids)} tokens)"
    os_py = Path(sysconfig.get_paths()["stdlib"]) / "os.py"
    if os_py.exists():
        tree = ast.parse(os_py.read_text(encoding="utf-8"))
        docs = [
            d
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and (d := ast.get_docstring(n))
        ]
        more = list(tok.encode("\n\n".join(docs)))
        source += f" + os.py docstrings ({len(more)} tokens, training text)"
        ids += more
    ids = ids[:limit]
    return [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1], source


def oracle_models(tmp: Path, quick: bool) -> Iterator[tuple[str, Model, Any]]:
    """(name, engine model, transformers model) of each oracle checkpoint; none without transformers."""
    try:
        import transformers

        from tests.engine.hf_models import load_oracle, make_checkpoint
    except ImportError as exc:
        print(f"oracle models skipped: {exc}", flush=True)
        return
    transformers.utils.logging.disable_progress_bar()
    names = list(ORACLES)[:2] if quick else list(ORACLES)
    for name in names:
        ckpt = make_checkpoint(tmp / name, **ORACLES[name])  # type: ignore[arg-type]
        yield name, load_model(ckpt), load_oracle(ckpt)


def check_oracle(name: str, model: Model, oracle: Any, ids: list[int]) -> None:
    """The engine's exact logits against transformers (tests/engine/test_oracle.py's bound)."""
    from tests.engine.hf_models import oracle_logits

    ours, theirs = model.logits(ids).astype(np.float64), oracle_logits(oracle, ids)
    r = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    print(f"correctness: {name}: exact vs transformers: relative logit error p90 {np.percentile(r, 90):.1e}, "
          f"max {r.max():.1e}", flush=True)  # fmt: skip
    if np.percentile(r, 90) > 1e-5 or r.max() > 3e-2:
        fail(f"{name}: the engine differs from transformers")


def random_bf16(rng: np.random.Generator, n: int, k: int) -> npt.NDArray[np.uint16]:
    """Random normal weights (N, K) as bf16 bits, built in slices (memory)."""
    out = np.empty((n, k), dtype=np.uint16)
    for r0 in range(0, n, 4096):
        r1 = min(n, r0 + 4096)
        out[r0:r1] = (rng.standard_normal((r1 - r0, k), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return out


def model_2b_decode(tokens: int, reps: int) -> dict[str, float]:
    """Decode tokens/s per mode of a random 2B-4T-shaped model, in a child process (its memory is its own)."""
    cmd = [sys.executable, __file__, "--child-2b", f"{tokens}:{reps}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        fail(f"the 2B-4T child failed:\n{proc.stderr}")
    last = proc.stdout.strip().splitlines()[-1].split()
    return dict(zip(MODES, map(float, last), strict=True))


# ------------------------------------------------------------------------------------------------ main


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return " ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens and repetitions (for a test)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each timing [5; 3 with --quick]")
    p.add_argument("--prompts", type=int, default=8, help="greedy prompts per model [8; 3 with --quick]")
    p.add_argument("--tokens", type=int, default=64, help="greedy and decoded tokens [64]")
    p.add_argument("--no-2b-model", action="store_true", help="skip the end-to-end 2B-4T-shaped model")
    p.add_argument("--child-2b", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_2b:
        tokens, reps = map(int, args.child_2b.split(":"))
        tps = decode_tps(Model(random_weights(SHAPES["2b4t"])), tokens, reps, [1, 2, 3, 4])
        print(" ".join(f"{tps[m]:.4f}" for m in MODES))
        return
    quick = args.quick
    reps = 3 if quick and args.reps == 5 else args.reps
    n_prompts = 3 if quick and args.prompts == 8 else args.prompts
    cpu = subprocess.run(["grep", "-m1", "model name", "/proc/cpuinfo"], capture_output=True, text=True).stdout
    print(f"cpu: {cpu.strip() or 'unknown'}; {os.cpu_count()} cores; kernel threads {ops.get_num_threads()}")
    print(f"load average before: {os.getloadavg()}; fast kernels {ops.FAST_KERNELS}, compiled ops {ops.FAST_OPS}")
    print(f"reps {reps}, greedy {n_prompts} prompts x {args.tokens} tokens, quick {quick}", flush=True)
    quality: dict[str, dict[str, Quality]] = {}
    speed: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)

    # oracle models: random token ids (they have no tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, oracle in oracle_models(Path(tmp), quick):
            v = model.vocab_size
            check_oracle(name, model, oracle, [int(t) for t in rng.integers(0, v, 37)])
            qual = quality[f"oracle {name}"] = {m: Quality() for m in MODES}
            n_win = 2 if quick else 4
            teacher_forced(model, [[int(t) for t in rng.integers(0, v, 150)] for _ in range(n_win)], qual, name)
            greedy(model, [[int(t) for t in rng.integers(0, v, 8)] for _ in range(n_prompts)], args.tokens, qual)

    # the demo model over real text
    from bitnet_actor.system import DEMO_MODEL_DIR

    demo = load_model(DEMO_MODEL_DIR)
    windows, source = real_text_windows(demo, 600 if quick else 4096, 256)
    print(f"demo model text: {source}; {sum(map(len, windows))} tokens used", flush=True)
    qual = quality["demo model (real text)"] = {m: Quality() for m in MODES}
    teacher_forced(demo, windows, qual, "demo model")
    tok = demo.tokenizer
    prompts = [list(tok.encode(t)) for t in DEMO_PROMPTS[:n_prompts]]
    greedy(demo, prompts, args.tokens, qual)
    speed["demo model, decode"] = decode_tps(demo, args.tokens, reps, prompts[0])

    # BitNet-b1.58-2B-4T output shape: vocab 128256 x hidden 2560 (1/8 of the rows with --quick)
    cfg = SHAPES["2b4t"]
    rows = cfg.vocab_size // 8 if quick else cfg.vocab_size
    label = f"2B-4T head {rows}x{cfg.hidden_size}"
    exact = DenseMatrix("bf16", random_bf16(rng, rows, cfg.hidden_size))
    heads = {"exact": exact, "q8": DenseMatrix.quantize_q8(exact), "q6": DenseMatrix.quantize_q6(exact)}
    xs = rng.standard_normal((64, cfg.hidden_size), dtype=np.float32)  # as after the final RMSNorm: rms 1
    check_head(label, heads["exact"], heads["q8"], heads["q6"], xs[:8])
    ex = ops.dense_matmul(xs, exact)
    quality[label + " (random)"] = {m: Quality() for m in MODES}
    for m, h in heads.items():
        quality[label + " (random)"][m].add_logits(ops.dense_matmul(xs, h), ex)
    speed[f"{label}, product alone"] = matmul_tps(heads, xs[:1], reps, 5 if quick else 20)
    del heads, exact
    if not quick and not args.no_2b_model:
        print("2B-4T-shaped random model: building (a child process)...", flush=True)
        speed["2B-4T random model, decode"] = model_2b_decode(args.tokens, reps)

    print("\nquality vs exact (teacher-forced top-1 agreement; |logit difference|; max per-position |difference|"
          " / that position's exact logit range; greedy: identical continuations, first divergence)")  # fmt: skip
    widths = [40, 5, 8, 8, 10, 10, 11, 9]
    print(_fmt_row(["model", "mode", "top-1", "positions", "max |d|", "mean |d|", "max/range", "greedy"], widths))
    for model_name, per in quality.items():
        for m in MODES:
            q = per[m]
            g = f"{q.greedy_same}/{q.greedy_total}" + (f" @{q.first_div}" if q.first_div is not None else "")
            top1 = f"{100 * q.top1:.2f}%" if "random" not in model_name else "-"
            cells = [model_name, m, top1, str(q.positions), f"{q.max_abs:.2e}", f"{q.mean_abs:.2e}",
                     f"{q.max_rel_range:.2e}", g if q.greedy_total else "-"]  # fmt: skip
            print(_fmt_row(cells, widths))
    print("\nspeed (medians; tokens/s, for the product alone products/s; x exact: the same run's ratio)")
    widths = [40, 10, 10, 10, 9, 9]
    print(_fmt_row(["what", "exact", "q8", "q6", "q8/ex", "q6/ex"], widths))
    for what, tps in speed.items():
        cells = [what, *(f"{tps[m]:.1f}" for m in MODES), f"{tps['q8'] / tps['exact']:.2f}x",
                 f"{tps['q6'] / tps['exact']:.2f}x"]  # fmt: skip
        print(_fmt_row(cells, widths))
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
