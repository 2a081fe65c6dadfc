"""Training: the learning-rate schedule, the training loop under a time or step budget, and evaluation."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from demo_model import log

if TYPE_CHECKING:
    import argparse

    from demo_model.network import DemoBitNet

__all__ = ["evaluate", "lr_at", "train"]


def lr_at(step: int, total: int, peak: float, warmup: int, hold: int, final_frac: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, ``peak`` until step ``hold``, then cosine decay to
    ``final_frac * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < hold:
        return peak
    progress = min(1.0, (step - hold) / max(1, total - hold))
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: DemoBitNet, ids: torch.Tensor, seq_len: int, max_tokens: int, bos_id: int, batch: int = 8) -> float:
    """Mean next-token cross-entropy over consecutive windows of ``ids`` (at most ``max_tokens`` predictions;
    BOS targets are not counted, see :func:`train`)."""
    model.eval()
    n = min(len(ids) - 1, max_tokens) // seq_len
    windows = ids[: n * seq_len + 1]
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = range(i, min(n, i + batch))
        x = torch.stack([windows[r * seq_len : (r + 1) * seq_len] for r in rows])
        y = torch.stack([windows[r * seq_len + 1 : (r + 1) * seq_len + 1] for r in rows])
        logits = model(x)
        y = y.masked_fill(y == bos_id, -100)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum", ignore_index=-100).item()
        count += int((y != -100).sum())
    model.train()
    return total / max(1, count)


def train(model: DemoBitNet, data: torch.Tensor, bos_id: int, args: argparse.Namespace) -> dict[str, float]:
    """Train with AdamW on random windows of ``data``; returns summary numbers.

    BOS is never a target: it only follows EOS, where generation has stopped, and a model that learnt to emit it
    would run on past the end of a document.

    The step count is ``args.steps`` or, when 0, what fits ``args.minutes``: at step ``args.hold`` the speed of
    the previous ``args.hold / 2`` steps sets it.  The learning rate does not depend on the step count before
    ``hold`` (warm-up, then the peak), so a run repeated with ``--steps`` set to the count found is identical.
    """
    gen = torch.Generator().manual_seed(args.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    total = args.steps
    warmup, hold = args.warmup, args.hold
    if total:
        hold = min(hold, total // 2)  # as found by --minutes, which makes total >= 2 * hold, or shorter
        warmup = max(1, min(warmup, hold // 2))
    elif not 0 < warmup <= hold // 2:
        raise SystemExit("--warmup must be positive and at most half of --hold")
    t_len, b = args.seq_len, args.batch_size
    start = t_mid = time.perf_counter()
    running, seen = 0.0, 0
    step, lr = 0, 0.0
    while True:
        if not args.steps and step == hold // 2:
            t_mid = time.perf_counter()
        if not args.steps and step == hold:
            now = time.perf_counter()
            per_step = (now - t_mid) / (hold - hold // 2)
            total = max(2 * hold, hold + int((args.minutes * 60 - (now - start)) / per_step))
            log(
                f"timing: {per_step:.3f} s/step -> {total} steps in {args.minutes:g} min (--steps {total} repeats this)"
            )
        if total and step >= total:
            break
        lr = lr_at(step, total or 2 * hold, args.lr, warmup, hold, args.final_lr_frac)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - t_len - 1, (b,), generator=gen).tolist()
        x = torch.stack([data[s : s + t_len] for s in starts])
        y = torch.stack([data[s + 1 : s + t_len + 1] for s in starts])
        y = y.masked_fill(y == bos_id, -100)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        seen += 1
        step += 1
        if step % args.log_every == 0 or step == total:
            elapsed = time.perf_counter() - start
            eta = f"{elapsed / step * (total - step):6.1f}s" if total else "?"
            log(
                f"step {step:5d}/{total or '?'}  loss {running / seen:.4f}  lr {lr:.2e}  "
                f"{step * b * t_len / elapsed:,.0f} tok/s  elapsed {elapsed:6.1f}s  eta {eta}"
            )
            running, seen = 0.0, 0
        if not args.steps and time.perf_counter() - start > args.minutes * 60 * 1.25 + 30:
            log(f"WARNING: stopping at step {step} of {total}: far over the --minutes budget")
            break
    return {"steps": step, "seconds": time.perf_counter() - start, "last_lr": lr}
