"""Checks of the exported directory: transformers' logits and greedy tokens against this script's forward, and
the project's engine against transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from demo_model import log
from demo_model.tokenizer import render_chat

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from demo_model.network import DemoBitNet


__all__ = ["DEMO_CHAT", "DEMO_PROMPTS", "Sample", "check_engine", "check_transformers", "greedy"]

DEMO_PROMPTS = ["The function returns", "Return a list of"]
DEMO_CHAT = "What does the os module do?"


@dataclass
class Sample:
    """A demo prompt and transformers' continuations of it."""

    label: str
    prompt_ids: list[int]
    greedy_ids: list[int]
    greedy: str
    sampled: str


@torch.no_grad()
def greedy(model: DemoBitNet, ids: list[int], n: int, stop: set[int]) -> list[int]:
    """Greedy continuation (without the stop token) by this script's model, recomputing the whole prefix."""
    out: list[int] = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
        if nxt in stop:
            break
        out.append(nxt)
    return out


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


@torch.no_grad()
def check_transformers(
    out: Path, exported: DemoBitNet, trained: DemoBitNet, val: torch.Tensor, seed: int, new_tokens: int = 40
) -> tuple[list[Sample], float]:
    """Load ``out`` with transformers, compare its logits with the quantized forward, print continuations.

    Args:
        out: the exported directory.
        exported: this script's model holding the exported values (:func:`load_exported`).
        trained: the trained model.
        val: validation token ids.
        seed: seeds sampling.
        new_tokens: the most tokens generated per prompt.

    Returns:
        The demo prompts with transformers' greedy and sampled continuations, and the relative logit error.

    Raises:
        SystemExit: the logits or the greedy tokens differ.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    exported.eval()
    trained.eval()
    n = min(4, (len(val) - 1) // 256)
    x = val[: n * 256].view(n, 256)
    ref, got, unrounded = exported(x), hf(input_ids=x).logits.float(), trained(x)
    rel = float((got - ref).norm() / ref.norm())
    rel_trained = float((got - unrounded).norm() / unrounded.norm())
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    log(
        f"transformers round trip ({hf.dtype}, {type(hf.model.layers[0].mlp.down_proj).__name__}): relative logit "
        f"error {rel:.2e} against this script's forward of the exported weights (argmax agreement {agree:.4f}), "
        f"{rel_trained:.2e} against the trained model before bf16 rounding"
    )
    stop = set(hf.generation_config.eos_token_id or [])
    chat = tok.apply_chat_template([{"role": "user", "content": DEMO_CHAT}], tokenize=False, add_generation_prompt=True)
    if chat != render_chat(DEMO_CHAT):
        raise SystemExit(f"chat template renders {chat!r}, training used {render_chat(DEMO_CHAT)!r}")
    prompts = [(p, tok(p).input_ids) for p in DEMO_PROMPTS]
    prompts.append((f"[chat] {DEMO_CHAT}", tok(chat, add_special_tokens=False).input_ids))
    samples, mismatches = [], 0
    for label, ids in prompts:
        inp = torch.tensor([ids])
        mask = torch.ones_like(inp)
        g = hf.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        g_ids = _until_stop(g[0, len(ids) :].tolist(), stop)
        mine = greedy(exported, list(ids), new_tokens, stop)
        mismatches += mine != g_ids
        torch.manual_seed(seed)
        s = hf.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True, temperature=0.7, top_p=0.9)
        sample = Sample(
            label=label,
            prompt_ids=list(ids),
            greedy_ids=g_ids,
            greedy=tok.decode(g_ids),
            sampled=tok.decode(_until_stop(s[0, len(ids) :].tolist(), stop)),
        )
        samples.append(sample)
        log(
            f"prompt {label!r}\n  greedy : {sample.greedy!r}\n  sampled: {sample.sampled!r}\n"
            f"  (this script's greedy tokens {'match' if mine == g_ids else 'DIFFER'})"
        )
    # int8 activation rounding flips on last-bit float differences, so a few 1e-4 of relative error is normal
    if rel > 5e-3 or agree < 0.99 or mismatches:
        raise SystemExit("transformers does not reproduce the exported model")
    return samples, rel


def check_engine(out: Path, samples: Sequence[Sample], new_tokens: int = 40) -> tuple[str, str]:
    """Load ``out`` with the project's engine; compare its tokenizer and greedy tokens with transformers'.

    Returns:
        A detailed report and a one-line summary (the engine is optional: an import or load failure is
        reported, not raised).
    """
    try:
        from bitnet_actor.engine import load_model
    except Exception as exc:  # the engine is built separately; report whatever keeps it from importing
        msg = f"engine not importable: {type(exc).__name__}: {exc}"
        return msg, msg
    try:
        m = load_model(out)
    except Exception as exc:  # report, do not fail: the model itself was checked with transformers
        msg = f"engine cannot load {out}: {type(exc).__name__}: {exc}"
        return msg, msg
    lines, same = [], 0
    for s in samples:
        got = list(m.generate(s.prompt_ids, max_tokens=new_tokens, temperature=0))
        same += got == s.greedy_ids
        verdict = "matches" if got == s.greedy_ids else "DIFFERS from"
        lines.append(f"{s.label!r}: engine greedy {verdict} transformers' ({m.tokenizer.decode(got)!r})")
    ids = list(m.tokenizer.encode("Return a list of"))
    text = m.tokenizer.decode(list(m.generate(ids, max_tokens=30, temperature=0)))
    lines.append(f"engine encode('Return a list of') = {ids}; greedy: {text!r}")
    summary = f"the project's engine gives transformers' greedy tokens for {same} of {len(samples)} prompts"
    return "\n".join(lines), summary
