"""The structured-output workload of ``ops/bench_serving.py`` (``--workload structured``).

A batch of streamed completions where half the requests are constrained by a JSON schema (the mask of every
step computed by llguidance over the whole vocabulary) and half are not: does the grammar slow the
constrained ones, and do the unconstrained ones in the same batch pay for it? Measured against a batch of
the same size with no constraint at all, in the same run.

The random model of the chosen shape gets a byte-level BPE tokenizer trained here on the Python standard
library's sources (the benchmark's own one-word-per-id vocabulary cannot spell JSON), as large as that text
allows up to the model's vocabulary (the logits stay the model's width; ids past the tokenizer's are never
allowed by the masks). The constrained schema asks for more items than ``--output-len`` tokens can hold, so
every request runs exactly ``--output-len`` tokens and the comparison is per token.

Correctness first: a short schema's output must parse and validate, and a greedy unconstrained request must
give the same text alone and inside a batch with constrained ones.
"""

from __future__ import annotations

import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import trio

LONG_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 16}, "score": {"type": "integer"}},
                "required": ["name", "score"],
                "additionalProperties": False,
            },
            "minItems": 1000,
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}
SHORT_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
PROMPT = "Return the result of the function as JSON:"


def _fmt(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def with_bpe_tokenizer(model_dir: Path, cache: Path, vocab_size: int) -> Path:
    """A directory beside ``model_dir``'s weights (linked) with a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = cache / f"{model_dir.name}-bpe"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        link = out / name
        if not link.exists():
            link.symlink_to((model_dir / name).resolve())
    if (out / "tokenizer.json").exists():
        return out
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if not {"test", "tests", "site-packages"} & set(p.parts))
    print(f"training a byte-level BPE tokenizer on {len(files)} stdlib files (once)", file=sys.stderr)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],  # ids 0 and 1: the model's bos / eos
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((p.read_text(encoding="utf-8", errors="replace") for p in files), trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    )
    print(f"tokenizer: {tok.get_vocab_size()} tokens (model vocabulary {vocab_size})", file=sys.stderr)
    return out


async def _one(http: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> tuple[float, float, int, str]:
    """TTFT, end-to-end seconds, completion tokens and text of one streamed completion."""
    started = time.perf_counter()
    ttft, tokens, text = 0.0, 0, []
    headers = {"Authorization": f"Bearer {key}"}
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", f"{url}/v1/completions", json=stream_body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread()).decode()}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"]:
                if not ttft:
                    ttft = time.perf_counter() - started
                text.append(chunk["choices"][0]["text"])
    return ttft, time.perf_counter() - started, tokens, "".join(text)


async def _batch(url: str, key: str, bodies: list[dict[str, Any]]) -> list[tuple[float, float, int, str]]:
    out: list[Any] = [None] * len(bodies)
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=len(bodies) + 2)) as http:

        async def go(i: int) -> None:
            out[i] = await _one(http, url, key, bodies[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(go, i)
    return out


async def check(url: str, key: str, model: str) -> None:
    """Outputs parse and validate; constrained neighbours leave a greedy unconstrained output unchanged."""
    import jsonschema

    plain = {"model": model, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    short = {"model": model, "prompt": PROMPT, "max_tokens": 64, "temperature": 0.8, "seed": 1}
    (alone,) = await _batch(url, key, [plain])
    results = await _batch(
        url, key, [plain, *({**short, "seed": s, "response_format": _fmt(SHORT_SCHEMA, "s")} for s in range(3))]
    )
    assert results[0][3] == alone[3], "a constrained neighbour changed an unconstrained greedy output"
    for _, _, _, text in results[1:]:
        jsonschema.validate(json.loads(text), SHORT_SCHEMA)
    print("correctness: ok (constrained outputs parse and validate; the unconstrained greedy text is unchanged)")


def _tpot(result: tuple[float, float, int, str]) -> float:
    ttft, e2e, tokens, _ = result
    return (e2e - ttft) / max(tokens - 1, 1)


async def measure(url: str, key: str, model: str, *, batch: int, output_len: int, repeats: int) -> None:
    """Print the table: all-unconstrained batches against mixed ones, medians over ``repeats`` runs."""
    await check(url, key, model)
    plain = {"model": model, "prompt": PROMPT, "max_tokens": output_len, "temperature": 0, "ignore_eos": True}
    constrained = {**plain, "response_format": _fmt(LONG_SCHEMA, "long")}
    half = batch // 2
    base_tpot, base_rate, mix_plain, mix_cons, mix_rate = [], [], [], [], []
    for r in range(repeats):
        started = time.perf_counter()
        results = await _batch(url, key, [plain] * batch)
        wall = time.perf_counter() - started
        base_tpot.append(statistics.median(_tpot(x) for x in results))
        base_rate.append(sum(x[2] for x in results) / wall)
        started = time.perf_counter()
        results = await _batch(url, key, [plain] * (batch - half) + [constrained] * half)
        wall = time.perf_counter() - started
        assert all(x[2] == output_len for x in results), [x[2] for x in results]
        mix_plain.append(statistics.median(_tpot(x) for x in results[: batch - half]))
        mix_cons.append(statistics.median(_tpot(x) for x in results[batch - half :]))
        mix_rate.append(sum(x[2] for x in results) / wall)
        print(f"run {r + 1}/{repeats} done", file=sys.stderr)
    med = statistics.median
    print(f"\nstructured output: batch of {batch}, {output_len} tokens each, medians of {repeats} runs")
    print("| batch | unconstrained TPOT ms | constrained TPOT ms | batch output tok/s |")
    print("|---|---:|---:|---:|")
    print(f"| {batch} unconstrained | {med(base_tpot) * 1e3:.1f} | - | {med(base_rate):.1f} |")
    print(
        f"| {batch - half} unconstrained + {half} json_schema | {med(mix_plain) * 1e3:.1f} | "
        f"{med(mix_cons) * 1e3:.1f} | {med(mix_rate):.1f} |"
    )
    print(
        f"constrained tok/s / unconstrained tok/s, same batch: {med(mix_plain) / med(mix_cons):.3f}x (goal >= 0.9); "
        f"unconstrained in the mixed batch vs an all-unconstrained batch: {med(base_tpot) / med(mix_plain):.3f}x; "
        f"batch throughput mixed / unconstrained: {med(mix_rate) / med(base_rate):.3f}x"
    )
