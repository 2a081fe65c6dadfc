"""Fuzz model files for longer than the test does: many seeds of every mutation kind, for a time budget.

Usage: ``python ops/fuzz_model_files.py --seconds 120``.  Checks each load as the test does (the project's
error naming the file, no hang, no crash, peak-RSS growth under the bound) and prints a table: cases per
kind, outcomes by error type, failures, max seconds and max RSS growth.  Exits 1 when any case failed; the
first failures are printed with their kind and case number (the generator is seeded from ``--seed``).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine import model_fuzz as mf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fuzz-model-files-"))
    try:
        return _run(root, args.seconds, args.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, seconds: float, seed: int) -> int:
    hf, gguf = mf.build_seeds(root / "seeds")
    seeds = {n: (hf / n).read_bytes() for n in ("model.safetensors", "tokenizer.json")}
    seeds["model.gguf"] = gguf.read_bytes()
    fields = mf.gguf_fields(seeds["model.gguf"])
    rng = np.random.default_rng(seed)

    def gguf_lie(d: bytes, r: np.random.Generator) -> bytes:
        return mf.gguf_lie(d, fields[int(r.integers(len(fields)))], int(r.choice(mf.INTERESTING)))

    kinds = {
        "st-truncate": ("model.safetensors", "model", mf.truncate),
        "st-flip-header": ("model.safetensors", "model", lambda d, r: mf.bit_flips(d, r, region=4096)),
        "st-flip": ("model.safetensors", "model", mf.bit_flips),
        "gguf-truncate": ("model.gguf", "model", mf.truncate),
        "gguf-flip-header": ("model.gguf", "model", lambda d, r: mf.bit_flips(d, r, region=12288)),
        "gguf-flip": ("model.gguf", "model", mf.bit_flips),
        "gguf-lie": ("model.gguf", "model", gguf_lie),
        "tok-truncate": ("tokenizer.json", "tokenizer", mf.truncate),
        "tok-flip": ("tokenizer.json", "tokenizer", mf.bit_flips),
        "tok-flip-model": ("tokenizer.json", "model", mf.bit_flips),
    }
    stats = {k: collections.Counter[str]() for k in kinds}
    max_s = dict.fromkeys(kinds, 0.0)
    max_rss = dict.fromkeys(kinds, 0)
    failures: list[str] = []
    worker = mf.LoadWorker(timeout_s=30.0)
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline:
            for kind, (name, op, mutate) in kinds.items():
                n += 1
                data = mutate(seeds[name], rng)
                if name == "model.gguf":
                    target = file = root / "case.gguf"
                else:
                    target = root / "case"
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(hf, target)
                    file = target / name
                file.write_bytes(data)
                out = worker.load(target, op)
                allowed = "TokenizerError" if op == "tokenizer" else "ModelLoadError"
                label = out.error or "loaded"
                bad = out.error in ("Hang", "Crash") or (
                    out.error is not None and not (out.is_a(allowed) and str(file) in out.message)
                )
                bad = bad or out.rss_growth > mf.RSS_BOUND
                stats[kind][label] += 1
                max_s[kind] = max(max_s[kind], out.seconds)
                max_rss[kind] = max(max_rss[kind], out.rss_growth)
                if bad:
                    stats[kind]["FAILED"] += 1
                    failures.append(f"{kind} case {n}: {out.error}: {out.message[:200]}\n{out.traceback[-800:]}")
    finally:
        worker.close()
    labels = sorted({lab for c in stats.values() for lab in c})
    print(f"{'kind':18} {'cases':>6} " + " ".join(f"{lab[:22]:>22}" for lab in labels) + "    max s  max RSS MiB")
    for kind, c in stats.items():
        cells = " ".join(f"{c.get(lab, 0):>22}" for lab in labels)
        total = sum(v for k, v in c.items() if k != "FAILED")
        print(f"{kind:18} {total:>6} {cells} {max_s[kind]:8.3f} {max_rss[kind] / 2**20:11.1f}")
    for f in failures[:5]:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
