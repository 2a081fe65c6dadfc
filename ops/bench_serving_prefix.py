"""The shared-system-prompt workload of ``bench_serving.py --workload shared-prefix``: TTFT with the prefix cache
off and on.

Every request is one common prefix (``--prefix-len`` tokens, 1,000 by default: a long system prompt) and a user
turn of its own (``--turn-len``, 64), streamed one at a time. Two servers are started in turn on the same model:
one with ``--prefix-cache-scope off``, one with the default (``org``). On the second, the first request is a miss
that caches the prefix; the next ones hit it and prefill only what follows its last full block of 16 tokens.

Correctness first, on each server (after one unrelated warm-up request) before its timed requests: a greedy,
non-streamed request gives the same tokens on both servers, and its second run reports as
``usage.prompt_tokens_details.cached_tokens`` every full block of it on the cached server (0 on the other) and
still gives the same tokens. The timed
streamed outputs must agree between the servers too. Then a table of medians over the ``--repeats`` requests and
the TTFT ratio (the goal: at least 5x lower on hits).
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import trio

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from pathlib import Path

BLOCK = 16  # the engine's prefix cache block (bitnet_actor.engine.prefix_cache.BLOCK_TOKENS)


@dataclass
class Timed:
    ttft: float
    e2e: float
    text: str = ""
    cached: int = -1
    tokens: int = 0
    chunks: list[str] = field(default_factory=list)


def prompts(prefix_len: int, turn_len: int, count: int, vocab: int) -> list[list[int]]:
    """``count`` prompts: one shared prefix, each with its own turn (token ids of the random model's vocabulary)."""
    rng = np.random.default_rng(7)
    prefix = [int(t) for t in rng.integers(10, min(vocab, 1000), prefix_len)]
    return [prefix + [int(t) for t in rng.integers(10, min(vocab, 1000), turn_len)] for _ in range(count)]


def expected_hit(prefix_len: int, prompt_len: int) -> int:
    """The cached tokens a hit reports: the prefix's full blocks, leaving at least one prompt token to compute."""
    return min(prefix_len // BLOCK, (prompt_len - 1) // BLOCK) * BLOCK


async def complete(url: str, key: str, model: str, prompt: list[int], out: int) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": out, "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(timeout=900) as http:
        r = await http.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return dict(r.json())


async def stream(url: str, key: str, model: str, prompt: list[int], out: int) -> Timed:
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
    timed = Timed(0.0, 0.0)
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(timeout=900) as http,
        http.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r,
    ):
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                timed.cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
                timed.tokens = chunk["usage"]["completion_tokens"]
                continue
            if not timed.chunks:
                timed.ttft = time.perf_counter() - started
            timed.chunks.append(chunk["choices"][0]["text"])
    timed.e2e = time.perf_counter() - started
    timed.text = "".join(timed.chunks)
    return timed


def serve_and_measure(
    spawn: Callable[..., Any],
    model_dir: Path,
    scope: str,
    todo: list[list[int]],
    args: argparse.Namespace,
    reference: str | None,
) -> tuple[str, list[Timed]]:
    """Start a server with ``--prefix-cache-scope scope``, check it, then stream every prompt in turn.

    Returns:
        The greedy text of the check (the reference for the other server) and the timed requests.
    """
    proc, url, key, data = spawn(model_dir, args.device, ["--prefix-cache-scope", scope])
    try:
        warm = [int(t) for t in np.random.default_rng(8).integers(10, 1000, 64)]  # threads and caches, no shared prefix
        trio.run(complete, url, key, args.model, warm, 4)
        cold = trio.run(complete, url, key, args.model, todo[0], args.output_len)
        again = trio.run(complete, url, key, args.model, todo[0], args.output_len)
        text = cold["choices"][0]["text"]
        assert cold["usage"]["completion_tokens"] == args.output_len, cold["usage"]
        assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, cold["usage"]
        hit = expected_hit(args.prefix_len, len(todo[0])) if scope != "off" else 0
        # the same prompt again: on the cached server every full block of it is cached, not just the prefix's
        whole = (len(todo[0]) - 1) // BLOCK * BLOCK if scope != "off" else 0
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == whole, again["usage"]
        assert again["choices"][0]["text"] == text, "a prefix cache hit changed the greedy output"
        if reference is not None:
            assert text == reference, "the servers with the prefix cache on and off disagree (greedy)"
        print(f"correctness ({scope}): ok (greedy text equal to the other server's; cached tokens as expected)")
        timed = [trio.run(stream, url, key, args.model, prompt, args.output_len) for prompt in todo[1:]]
        for t in timed:
            assert t.tokens == args.output_len
            assert t.cached == hit, (t.cached, hit)
        return text, timed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def run_shared_prefix(spawn: Callable[..., Any], model_dir: Path, vocab: int, args: argparse.Namespace) -> None:
    """The workload (see the module docstring); prints the table and the ratio."""
    todo = prompts(args.prefix_len, args.turn_len, args.repeats + 1, vocab)
    reference, off = serve_and_measure(spawn, model_dir, "off", todo, args, None)
    _, on = serve_and_measure(spawn, model_dir, "org", todo, args, reference)
    assert [t.text for t in on] == [t.text for t in off], "streamed outputs differ with the prefix cache on and off"
    print(
        f"\nshared prefix {args.prefix_len} tokens + user turn {args.turn_len} tokens, output {args.output_len} "
        f"tokens (ignore_eos), one request at a time, medians of {args.repeats} requests:"
    )
    print("| prefix cache | requests | cached tokens | TTFT s | TTFT min s | TTFT max s | E2E s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, timed in (("off", off), ("on (hits)", on)):
        ttft = [t.ttft for t in timed]
        cached = statistics.median(t.cached for t in timed)
        print(
            f"| {name} | {len(timed)} | {cached:.0f} | {statistics.median(ttft):.3f} | {min(ttft):.3f} "
            f"| {max(ttft):.3f} | {statistics.median(t.e2e for t in timed):.2f} |"
        )
    ratio = statistics.median(t.ttft for t in off) / statistics.median(t.ttft for t in on)
    goal = "meets" if ratio >= 5 else "misses"
    print(f"TTFT with the prefix cache off / on (hits): {ratio:.1f}x lower on hits ({goal} the goal of >= 5x)")
