"""``bitnet-actor generate``, ``inspect`` and ``convert``: the model engine from the command line.

``generate --model PATH --prompt TEXT`` loads the model (a progress bar on stderr), streams the completion
to stdout as it is generated and prints a one-line summary (tokens, prefill and decode speed) on stderr.
``inspect PATH`` prints the architecture, sizes and every stored tensor format with its count and bytes.
``convert SRC DST --to hf-ternary|tq1_0|tq2_0|i2_s`` converts a model (:mod:`bitnet_actor.engine.convert`)
with a progress bar on stderr and prints the output's path, size and sha256 on stdout.

Wiring (in ``bitnet_actor.cli``): ``add_subcommands(subparsers)`` registers the commands;
``run(args) -> int`` runs the one parsed.  Errors print one line, ``bitnet-actor: error: ...``, and
return 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bitnet_actor.engine import EngineError, SamplingParams, load_model
from bitnet_actor.engine.inspection import inspect_model
from bitnet_actor.errors import BitnetError

if TYPE_CHECKING:
    import argparse

__all__ = ["COMMANDS", "add_subcommands", "run"]

PROG = "bitnet-actor"
COMMANDS = ("generate", "inspect", "convert")


def add_subcommands(subparsers: Any) -> None:
    """Register ``generate``, ``inspect`` and ``convert`` on an argparse sub-parsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
    """
    gen = subparsers.add_parser("generate", help="generate text with a model, streamed to the terminal")
    gen.add_argument("--model", required=True, type=Path, metavar="PATH", help="HF model directory or .gguf file")
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    gen.add_argument("--system", metavar="TEXT", help="a system message (with --chat)")
    gen.add_argument("--max-tokens", type=int, default=256, metavar="N", help="most tokens to generate [256]")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 for greedy [0]")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens [off]")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus mass [1: off]")
    gen.add_argument("--min-p", type=float, default=0.0, metavar="P", help="min probability ratio [0: off]")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X", help="[1: off]")
    gen.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (reproducible sampling)")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    gen.add_argument("--threads", type=int, default=None, metavar="N", help="kernel threads [all cores]")
    gen.add_argument("--output-layer", choices=("exact", "q8", "q6"), default="exact", help="output matrix [exact]")
    gen.add_argument(
        "--kv-cache", choices=("f32", "f16"), default="f32", help="KV cache type (f16: half its memory) [f32]"
    )
    gen.add_argument(
        "--device",
        choices=("cpu", "opencl", "auto"),
        default="cpu",
        help="where the model runs; auto: an OpenCL GPU if usable, else the CPU [cpu]",
    )
    gen.add_argument(
        "--opencl-device",
        default=None,
        metavar="SEL",
        help="OpenCL device: auto, P:D or a name fragment [BITNET_OPENCL_DEVICE, default auto]",
    )
    ins = subparsers.add_parser("inspect", help="print a model's architecture, tensor formats and sizes")
    ins.add_argument("path", type=Path, metavar="PATH", help="HF model directory or .gguf file")
    ins.add_argument("--tensors", action="store_true", help="list every tensor")
    from bitnet_actor.engine.convert import FORMATS

    conv = subparsers.add_parser("convert", help="convert a model to ternary packed HF or GGUF TQ1_0/TQ2_0/I2_S")
    conv.add_argument("src", type=Path, metavar="SRC", help="HF model directory or .gguf file")
    conv.add_argument("dst", type=Path, metavar="DST", help="the directory (hf-ternary) or .gguf file to create")
    conv.add_argument("--to", required=True, choices=FORMATS, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    conv.add_argument(
        "--dense", choices=("f16", "f32"), default="f16", help="GGUF type of embeddings and output layer [f16]"
    )


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``generate`` or ``inspect`` command.

    Args:
        args: the parsed arguments (``args.command`` names the command).

    Returns:
        The exit status: 0, or 1 after a one-line error on stderr (130 on Ctrl-C).
    """
    try:
        if args.command == "generate":
            return _generate(args, sys.stdout, sys.stderr)
        if args.command == "inspect":
            return _inspect(args, sys.stdout, sys.stderr)
        if args.command == "convert":
            return _convert(args, sys.stdout, sys.stderr)
        print(f"{PROG}: error: unknown command {args.command!r}", file=sys.stderr)
        return 1
    except (BitnetError, ValueError, OSError) as exc:
        print(f"\n{PROG}: error: {exc}" if _progress_open else f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


_progress_open = False


class _Progress:
    """A one-line progress bar on a terminal; start and end lines otherwise."""

    DONE = "loaded"

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.t0 = time.perf_counter()
        self.last = -1
        if not self.tty:
            print(f"loading {label} ...", file=out)

    def __call__(self, done: int, total: int) -> None:
        global _progress_open
        if not self.tty:
            return
        pct = 100 * done // max(total, 1)
        if pct == self.last and done != total:
            return
        self.last = pct
        bar = "#" * (pct * 30 // 100)
        self.out.write(f"\rloading {self.label} [{bar:<30}] {pct:3d}% ({done}/{total} tensors)")
        self.out.flush()
        _progress_open = True

    def close(self) -> None:
        global _progress_open
        dt = time.perf_counter() - self.t0
        if self.tty:
            self.out.write("\n")
        _progress_open = False
        print(f"{self.DONE} in {dt:.1f} s", file=self.out)


class _ConvertProgress(_Progress):
    """The bar of :class:`_Progress`, fed ``(tensors_done, tensors_total, bytes_done, bytes_total)``."""

    DONE = "converted"

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.t0 = time.perf_counter()
        self.last = -1
        if not self.tty:
            print(f"converting {label} ...", file=out)

    def update(self, done: int, total: int, nbytes: int, total_bytes: int) -> None:
        global _progress_open
        if not self.tty:
            return
        pct = 100 * nbytes // max(total_bytes, 1)
        if pct == self.last and done != total:
            return
        self.last = pct
        bar = "#" * (pct * 30 // 100)
        self.out.write(
            f"\rconverting {self.label} [{bar:<30}] {pct:3d}% ({done}/{total} tensors, {nbytes / 1e6:.1f} MB)"
        )
        self.out.flush()
        _progress_open = True


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bitnet_actor.engine.convert import convert_model

    bar = _ConvertProgress(err, f"{args.src} to {args.to}")
    result = convert_model(args.src, args.dst, args.to, progress=bar.update, dense=args.dense)
    bar.close()
    out.write(
        f"wrote {result.path} ({result.format}, {result.nbytes / 1e6:.1f} MB, {result.parameter_count:,} parameters)\n"
    )
    for name, digest in result.sha256.items():
        out.write(f"  sha256 {digest}  {name}\n")
    return 0


def _load(path: Path, err: TextIO, **kw: Any) -> Any:
    bar = _Progress(err, str(path))
    model = load_model(path, progress=bar, **kw)
    bar.close()
    return model


def _generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
    )
    model = _load(
        args.model,
        err,
        threads=args.threads,
        output=args.output_layer,
        device=args.device,
        opencl_device=args.opencl_device,
        kv_cache=args.kv_cache,
    )
    if not model.has_tokenizer:
        raise EngineError(f"{args.model}: no tokenizer found next to the model; cannot encode a text prompt")
    tok = model.tokenizer
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        ids = tok.encode(args.prompt)
    if len(ids) + params.max_tokens > model.context_length:
        params = SamplingParams(**{**params.__dict__, "max_tokens": max(1, model.context_length - len(ids))})
    seq = model.new_sequence(ids, params)
    t0 = time.perf_counter()
    t_first: float | None = None
    try:
        while not seq.finished:
            for o in model.step([seq]):
                if o.token_id is not None and t_first is None:
                    t_first = time.perf_counter()
                if o.text:
                    out.write(o.text)
                    out.flush()
    finally:
        seq.release()
    t1 = time.perf_counter()
    out.write("\n")
    out.flush()
    n = len(seq.output_ids)
    pre = len(ids) / (t_first - t0) if t_first and t_first > t0 else 0.0
    dec = (n - 1) / (t1 - t_first) if t_first and n > 1 and t1 > t_first else 0.0
    print(
        f"[{n} tokens, {seq.finish_reason}; prompt {len(ids)} tokens at {pre:.1f} tok/s, "
        f"decode {dec:.1f} tok/s; {model.device}]",
        file=err,
    )
    return 0


def _inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    bar: _Progress | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # made on the first tensor: a path that is not a model fails on one line
            bar = _Progress(err, str(args.path))
        bar(done, total)

    report = inspect_model(args.path, progress=progress)
    if bar is not None:
        bar.close()
    info = report.info
    cfg = report.config
    lines = [
        f"path:            {args.path}",
        f"format:          {info.source_format}",
        f"architecture:    {info.architecture} ({info.family})",
        f"parameters:      {info.parameter_count:,}",
        f"layers:          {cfg.num_layers}, hidden {cfg.hidden_size}, FFN {cfg.intermediate_size} "
        f"({cfg.hidden_act}), heads {cfg.num_heads} / {cfg.num_kv_heads} KV x {cfg.head_dim}",
        f"vocabulary:      {cfg.vocab_size}, tied embeddings: {cfg.tie_word_embeddings}",
        f"context length:  {info.context_length}, RoPE theta {cfg.rope_theta:g}",
        f"weights held:    {info.nbytes / 1e6:.1f} MB; read per decoded token {info.bytes_per_token / 1e6:.1f} MB",
        f"tokenizer:       {'yes' if report.tokenizer_kind is not None else 'none found'}",
        "loaded as:       " + ", ".join(f"{k} x{v}" for k, v in info.formats),
        "stored tensors:",
    ]
    for dtype, count, nbytes in report.stored_formats():
        lines.append(f"  {dtype:<8} {count:5d} tensors {nbytes / 1e6:12.1f} MB")
    if args.tensors:
        lines += [
            f"  {name:<48} {dtype:<6} {shape!s:<18} {nbytes:>12,}" for name, dtype, shape, nbytes in report.tensors
        ]
    out.write("\n".join(lines) + "\n")
    return 0
