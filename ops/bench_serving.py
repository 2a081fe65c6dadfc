"""Serving benchmark, as vLLM's measures it: TTFT, TPOT, ITL, end-to-end latency and throughput.

Against a running server (``--url`` and ``--api-key``), or one this script starts (``--spawn``) on a random
model with the shapes of BitNet-b1.58-2B-4T (or ``--shape 700m``), written once to ``--model-cache``.

For each concurrency level (1, 4, 8, 16 by default) it sends ``--requests`` streaming completions with a fixed
prompt length and a fixed output length (``ignore_eos``), ``concurrency`` at a time, and prints medians (and
p90s) per level, the output throughput (generated tokens per second of wall time, prefills included) and the
aggregate decode throughput (concurrency / median TPOT: what the batch decodes per second once the prompts
are in). Before timing anything it checks the server: a non-streaming request must come back with
exactly the asked number of tokens, and the streamed text of a greedy request must equal the non-streamed.

``--workload shared-prefix`` (with ``--spawn``) measures the prefix cache instead: requests sharing a long system
prompt, TTFT with the cache off and on (``bench_serving_prefix.py`` says how).

    python ops/bench_serving.py --spawn                    # 2B4T-shaped model, this machine
    python ops/bench_serving.py --url http://host:8000 --api-key bnk_live_... --model NAME
    python ops/bench_serving.py --spawn --workload structured --shape 700m   # JSON-schema requests in a batch
    python ops/bench_serving.py --spawn --workload shared-prefix --output-len 16   # prefix cache off vs on
"""

from __future__ import annotations

import os

# Before numpy loads: OpenBLAS's spinning idle workers would stall the OpenMP kernels measured here on the same
# cores (a numpy baseline runs right before them); see bitnet_actor/__init__.py.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import trio

SHAPES = {
    "2b4t": {
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_hidden_layers": 30,
        "num_attention_heads": 20,
        "num_key_value_heads": 5,
        "vocab_size": 128256,
    },
    "700m": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 32002,
    },
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
    },
}


def write_random_model(root: Path, shape: str) -> Path:
    """A random BitNet checkpoint (HF packed format, tied f16 embeddings) with a tokenizer covering its vocabulary."""
    from safetensors.numpy import save_file

    dims = SHAPES[shape]
    if (root / "model.safetensors").exists():
        write_tokenizer(root, dims["vocab_size"])
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, f, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    heads, kv = dims["num_attention_heads"], dims["num_key_value_heads"]
    hd = h // heads
    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": (0.02 * rng.standard_normal((v, h))).astype(np.float16),
        "model.norm.weight": np.ones(h, np.float32),
    }
    shapes = {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (f, h),
        "mlp.up_proj": (f, h),
        "mlp.down_proj": (h, f),
    }
    for layer in range(dims["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for name, (n, k) in shapes.items():
            codes = rng.integers(0, 3, ((n + 3) // 4, k, 4), dtype=np.uint8)  # 0, 1, 2 = -1, 0, +1
            tensors[p + name + ".weight"] = codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6
            tensors[p + name + ".weight_scale"] = np.array([0.05], np.float32)
        for norm in ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm"):
            size = f if norm == "mlp.ffn_sub_norm" else h
            tensors[p + norm + ".weight"] = np.ones(size, np.float32)
        print(f"\rwriting random {shape} model: layer {layer + 1}/{dims['num_hidden_layers']}", end="", file=sys.stderr)
    print(file=sys.stderr)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        **dims,
        "hidden_act": "relu2",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline",
        },
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(root, v)
    return root


def write_tokenizer(root: Path, vocab_size: int) -> None:
    """A tokenizer with one visible word per id (`` t123``), so that every generated token of the random model
    is text of its own: each streams as its own SSE chunk and TTFT / ITL measure tokens, not held-back bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = root / "tokenizer.json"
    if path.exists() and Tokenizer.from_file(str(path)).get_vocab_size() == vocab_size:
        return
    vocab = {f"\u0120t{i}": i for i in range(2, vocab_size)}  # \u0120 is the byte-level space
    vocab.update({"<|begin_of_text|>": 0, "<|end_of_text|>": 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|end_of_text|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    tok.save(str(path))
    (root / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    )


@dataclass
class Result:
    ttft: float
    e2e: float
    itls: list[float] = field(default_factory=list)
    tokens: int = 0


async def one_request(http: httpx.AsyncClient, url: str, key: str, model: str, prompt: list[int], out: int) -> Result:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": out,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    last = None
    result = Result(0.0, 0.0)
    async with http.stream("POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
                continue
            if last is None:
                result.ttft = now - started
            else:
                result.itls.append(now - last)
            last = now
    result.e2e = time.perf_counter() - started
    return result


async def run_level(
    url: str, key: str, model: str, prompt: list[int], out: int, concurrency: int, n: int
) -> tuple[list[Result], float]:
    results: list[Result] = []
    limiter = trio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 2)) as http:
        started = time.perf_counter()

        async def go() -> None:
            async with limiter:
                results.append(await one_request(http, url, key, model, prompt, out))

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(go)
        return results, time.perf_counter() - started


async def check(url: str, key: str, model: str, prompt: list[int]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(f"{url}/v1/completions", json=body, headers=headers)
        r.raise_for_status()
        whole = r.json()
        assert whole["usage"]["completion_tokens"] == 8, whole["usage"]
        text = ""
        async with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=headers) as s:
            async for line in s.aiter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
    assert text == whole["choices"][0]["text"], "streamed and whole greedy outputs differ"
    print("correctness: ok (8 tokens exactly; streamed == non-streamed greedy text)")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def spawn(
    model_dir: Path, device: str = "cpu", extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    data = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BITNET_DATA_DIR": str(data), "BITNET_NO_DEMO_MODEL": "1"}
    env.pop("BITNET_DATABASE_URL", None)
    env.pop("BITNET_REDIS_URL", None)
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bitnet_actor",
            "serve",
            "--port",
            str(port),
            "--model",
            f"bench={model_dir}",
            "--max-batch",
            "16",
            "--max-queue",
            "256",
            "--device",
            device,
            *(extra or []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitnet_actor",
            "admin",
            "create-org",
            "--name",
            "bench",
            "--owner-email",
            "bench@example.com",
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    # the free plan's limits (4 requests in flight and in the batch, 60 a minute) would be measured instead
    limits = ["--rpm", "--tpm", "--key-rpm", "--key-tpm", "--key-concurrency", "--monthly-token-quota"]
    admin = [sys.executable, "-m", "bitnet_actor", "admin"]
    unlimited = [x for flag in limits for x in (flag, "none")]
    running = ["--max-running", "256"]  # sequences of the organization in the batch at once (free: 4)
    subprocess.run(
        [*admin, "edit-plan", "--name", "bench", *unlimited, *running], env=env, capture_output=True, check=True
    )
    subprocess.run([*admin, "set-plan", "--org", "bench", "--plan", "bench"], env=env, capture_output=True, check=True)
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitnet_actor",
            "admin",
            "create-key",
            "--org",
            "bench",
            "--name",
            "b",
            "--scopes",
            "inference",
        ],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    return proc, url, key, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--spawn", action="store_true", help="start a server on a random model of --shape")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2b4t")
    parser.add_argument("--model-cache", type=Path, default=Path(tempfile.gettempdir()) / "bitnet-bench-models")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=0, help="per level (default: 2x concurrency, at least 4)")
    parser.add_argument("--device", choices=("cpu", "opencl", "auto"), default="cpu", help="with --spawn")
    parser.add_argument(
        "--workload",
        choices=("levels", "structured", "shared-prefix"),
        default="levels",
        help="levels: the concurrency levels above; structured: JSON-schema requests beside unconstrained ones "
        "in one batch (ops/serving_structured.py; with --spawn, a BPE tokenizer is trained for the model); "
        "shared-prefix: TTFT with the prefix cache off and on (ops/bench_serving_prefix.py; needs --spawn)",
    )
    parser.add_argument("--batch", type=int, default=8, help="structured: requests per batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="structured: runs per configuration [3]; shared-prefix: timed requests [5]",
    )
    parser.add_argument("--prefix-len", type=int, default=1000, help="shared-prefix: the common prefix")
    parser.add_argument("--turn-len", type=int, default=64, help="shared-prefix: each request's own turn")
    args = parser.parse_args()
    args.repeats = args.repeats or (5 if args.workload == "shared-prefix" else 3)
    proc = data = None
    if args.workload == "shared-prefix":
        if not args.spawn:
            parser.error("--workload shared-prefix starts its own servers: give --spawn")
        from bench_serving_prefix import run_shared_prefix

        model_dir = write_random_model(args.model_cache / args.shape, args.shape)
        run_shared_prefix(spawn, model_dir, SHAPES[args.shape]["vocab_size"], args)
        return
    if args.spawn:
        model_dir = write_random_model(args.model_cache / args.shape, args.shape)
        if args.workload == "structured":
            from serving_structured import with_bpe_tokenizer

            model_dir = with_bpe_tokenizer(model_dir, args.model_cache, SHAPES[args.shape]["vocab_size"])
        proc, url, key, data = spawn(model_dir, args.device)
    else:
        if not args.url or not args.api_key:
            parser.error("give --url and --api-key, or --spawn")
        url, key = args.url.rstrip("/"), args.api_key
    try:
        if args.workload == "structured":
            from serving_structured import measure

            out_len, reps = args.output_len, args.repeats
            trio.run(lambda: measure(url, key, args.model, batch=args.batch, output_len=out_len, repeats=reps))
            return
        prompt = [int(t) for t in np.random.default_rng(1).integers(10, 1000, args.prompt_len)]
        trio.run(check, url, key, args.model, prompt)
        rows = []
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            n = args.requests or max(4, 2 * concurrency)
            results, wall = trio.run(run_level, url, key, args.model, prompt, args.output_len, concurrency, n)
            tokens = sum(r.tokens for r in results)
            tpot = [(r.e2e - r.ttft) / max(r.tokens - 1, 1) for r in results]
            itl = [x for r in results for x in r.itls]
            rows.append(
                (
                    concurrency,
                    n,
                    statistics.median(r.ttft for r in results),
                    pct([r.ttft for r in results], 90),
                    statistics.median(tpot),
                    statistics.median(itl),
                    pct(itl, 90),
                    statistics.median(r.e2e for r in results),
                    tokens / wall,
                    n / wall,
                    concurrency / statistics.median(tpot),
                )
            )
        print(f"\nprompt {args.prompt_len} tokens, output {args.output_len} tokens (ignore_eos), medians:")
        print(
            "| concurrency | requests | TTFT s | TTFT p90 s | TPOT ms | ITL ms | ITL p90 ms | E2E s | output tok/s "
            "| decode tok/s | req/s |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c, n, ttft, ttft90, tpot, itl, itl90, e2e, tps, rps, dec in rows:
            print(
                f"| {c} | {n} | {ttft:.3f} | {ttft90:.3f} | {tpot * 1e3:.1f} | {itl * 1e3:.1f} | {itl90 * 1e3:.1f} | "
                f"{e2e:.2f} | {tps:.1f} | {dec:.1f} | {rps:.2f} |"
            )
        print(
            "output tok/s: generated tokens / wall time of the level (prefills included, as vLLM reports it); "
            "decode tok/s: concurrency / median TPOT (the batch's decode rate once prompts are in)"
        )
        single, single_dec = rows[0][8], rows[0][10]
        for row in rows[1:]:
            print(
                f"concurrency {row[0]}: output throughput {row[8] / single:.2f}x, aggregate decode throughput "
                f"{row[10] / single_dec:.2f}x the single stream"
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            shutil.rmtree(data, ignore_errors=True) if data else None


if __name__ == "__main__":
    main()
