"""Load test an OpenAI-compatible server (bitnet-actor, vLLM, ...) over HTTP with streamed completions.

Two ways to apply load:

- **open loop** (``--rate R``): requests arrive as a Poisson process of R per second for ``--duration`` seconds,
  each started at its arrival time whether or not earlier ones finished (what real traffic does). At most
  ``--max-in-flight`` run at once so the client itself stays honest: an arrival finding that many running is
  dropped and counted, not queued, and the report says how many were dropped and how late the client started
  the others (its own lag).
- **closed loop** (``--concurrency N``): N workers each send a request, wait for its end, and send the next,
  for ``--duration`` seconds (or ``--requests`` in all). Runs at several concurrencies make the per-replica
  curve that ``ops/capacity.py`` turns into a replica count.

Every request streams (``stream: true``, SSE) from ``/v1/completions`` or, with ``--chat``,
``/v1/chat/completions``. Per request it records the time to first token (TTFT: to the first chunk with text),
the gaps between text chunks (ITL), the end-to-end latency, the output tokens (the usage chunk's
``completion_tokens`` when the server sends one, else the text chunks) and the outcome: ``ok`` (2xx, stream
ended by ``[DONE]``), ``rate_limited`` (429: counted, never retried; its Retry-After kept for the report) or
``error`` (any other status, an error event in the stream, a stream cut short, a timeout, a transport error).

Output: a table on stdout (p50/p95/p99 of TTFT, ITL and end-to-end latency over the ``ok`` requests,
throughput in requests/s and output tokens/s, errors and 429s); with ``--out DIR``, ``DIR/results.json`` (the
configuration, the summary, a per-second timeline and every request) and ``DIR/latency.svg`` (latency of each
request over time and throughput per second). Progress goes to stderr, a line a second.

    python ops/loadtest.py --url http://127.0.0.1:8000 --api-key bnk_live_... --model NAME \\
        --rate 5 --duration 60 --max-tokens 64 --out results/rate5
    python ops/loadtest.py --url ... --api-key ... --model NAME --concurrency 8 --duration 60 --out results/c8

Exit status: 0 when the run completed (whatever the requests' outcomes), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import trio

__all__ = [
    "Record",
    "SseDecoder",
    "StreamReader",
    "main",
    "percentile",
    "poisson_schedule",
    "render_svg",
    "summarize",
    "timeline",
]

OK, RATE_LIMITED, ERROR = "ok", "rate_limited", "error"


# ---------------------------------------------------------------------------------------------------------------
# Arrivals and statistics (pure)


def poisson_schedule(rate: float, duration: float, seed: int | None) -> list[float]:
    """Arrival times (seconds from the start, increasing, all < ``duration``) of a Poisson process of ``rate``
    per second: exponential gaps of mean 1/rate drawn from a generator seeded with ``seed``."""
    if rate <= 0 or duration <= 0:
        return []
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between closest ranks (numpy's
    default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _dist_ms(values_s: list[float]) -> dict[str, float | int | None]:
    ms = [v * 1000.0 for v in values_s]
    out: dict[str, float | int | None] = {"count": len(ms)}
    for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0)):
        out[name] = percentile(ms, q)
    out["mean"] = sum(ms) / len(ms) if ms else None
    out["max"] = max(ms) if ms else None
    return out


@dataclass
class Record:
    """One request. Times in seconds from the start of the run; ``status`` 0 when no response came back."""

    index: int
    start_s: float
    scheduled_s: float | None = None  # open loop: its arrival time; start_s - scheduled_s is the client's lag
    status: int = 0
    outcome: str = ERROR
    ttft_s: float | None = None
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    chunks: int = 0  # SSE chunks carrying text
    output_tokens: int = 0
    prompt_tokens: int | None = None
    retry_after: str | None = None
    error: str | None = None

    def chunk_times(self) -> list[float]:
        """When each text chunk arrived, in seconds from the start of the run."""
        if self.ttft_s is None:
            return []
        t = self.start_s + self.ttft_s
        out = [t]
        for gap in self.itl_s:
            t += gap
            out.append(t)
        return out


def summarize(records: list[Record], elapsed_s: float, *, dropped: int = 0, max_in_flight: int = 0) -> dict[str, Any]:
    """The run's summary: counts, latency distributions (ms) over the ``ok`` requests, throughput over
    ``elapsed_s``, Retry-After values seen on 429s, and the open-loop client's lag."""
    ok = [r for r in records if r.outcome == OK]
    limited = [r for r in records if r.outcome == RATE_LIMITED]
    errors = [r for r in records if r.outcome == ERROR]
    tokens = sum(r.output_tokens for r in ok)
    lags = [r.start_s - r.scheduled_s for r in records if r.scheduled_s is not None]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    retry_after = sorted({r.retry_after for r in limited if r.retry_after is not None})
    return {
        "elapsed_s": elapsed_s,
        "sent": len(records),
        "ok": len(ok),
        "rate_limited": len(limited),
        "errors": len(errors),
        "dropped": dropped,
        "max_in_flight": max_in_flight,
        "statuses": statuses,
        "error_messages": sorted({r.error for r in errors if r.error})[:20],
        "retry_after": retry_after,
        "ttft_ms": _dist_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_ms": _dist_ms([g for r in ok for g in r.itl_s]),
        "e2e_ms": _dist_ms([r.e2e_s for r in ok]),
        "output_tokens": tokens,
        "throughput_rps": len(ok) / elapsed_s if elapsed_s > 0 else 0.0,
        "output_tokens_per_s": tokens / elapsed_s if elapsed_s > 0 else 0.0,
        "client_lag_ms": _dist_ms(lags),
    }


def timeline(records: list[Record], elapsed_s: float) -> list[dict[str, Any]]:
    """Per second of the run: requests started and completed (by outcome) and output tokens streamed (each text
    chunk weighs its request's output_tokens / chunks, so the total matches the usage the server reported)."""
    n = max(1, math.ceil(elapsed_s))
    rows: list[dict[str, Any]] = [
        {"second": i, "started": 0, "ok": 0, "rate_limited": 0, "errors": 0, "output_tokens": 0.0} for i in range(n)
    ]

    def at(t: float) -> dict[str, Any]:
        return rows[min(n - 1, max(0, int(t)))]

    for r in records:
        at(r.start_s)["started"] += 1
        at(r.start_s + r.e2e_s)[{OK: "ok", RATE_LIMITED: "rate_limited"}.get(r.outcome, "errors")] += 1
        if r.outcome == OK and r.chunks:
            weight = r.output_tokens / r.chunks
            for t in r.chunk_times():
                at(t)["output_tokens"] += weight
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Server-sent events


class SseDecoder:
    """Server-sent events, line by line, per the WHATWG rules: ``data:`` lines accumulate (joined by newlines),
    a blank line dispatches, ``:`` lines are comments, other fields (``event``, ``id``, ``retry``) are ignored.
    Feed it lines without their terminator (httpx's ``aiter_lines`` strips CR, LF and CRLF)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line; return an event's data when ``line`` ends one."""
        if line == "":
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data = []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        return None

    def close(self) -> str | None:
        """The end of the stream: an event left without its blank line is dispatched (lenient, as browsers are
        not, since some servers omit the last blank line)."""
        return self.feed("")


class StreamReader:
    """The OpenAI streaming protocol over SSE events: text chunks with their arrival times, the usage chunk,
    an error event, the ``[DONE]`` sentinel. ``event(data, now)`` takes each event's data in order."""

    def __init__(self, *, chat: bool, started: float) -> None:
        self.chat = chat
        self.started = started
        self.times: list[float] = []  # arrival of each text chunk
        self.text: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.done = False

    def event(self, data: str, now: float) -> None:
        if data == "[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            self.error = f"not JSON in the stream: {data[:80]!r}"
            return
        if not isinstance(obj, dict):
            self.error = f"not an object in the stream: {data[:80]!r}"
            return
        if obj.get("error"):
            err = obj["error"]
            self.error = "stream error: " + (str(err.get("message")) if isinstance(err, dict) else str(err))
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if piece:
                self.times.append(now)
                self.text.append(piece)

    def fill(self, record: Record) -> None:
        """Put TTFT, ITL, tokens and the outcome of a finished 2xx stream into ``record``."""
        if self.times:
            record.ttft_s = self.times[0] - self.started
            record.itl_s = [b - a for a, b in itertools.pairwise(self.times)]
        record.chunks = len(self.times)
        record.output_tokens = len(self.times)
        if self.usage is not None:
            record.output_tokens = int(self.usage.get("completion_tokens") or 0)
            if self.usage.get("prompt_tokens") is not None:
                record.prompt_tokens = int(self.usage["prompt_tokens"])
        if self.error:
            record.error = self.error
        elif not self.done:
            record.error = "the stream ended without [DONE]"
        else:
            record.outcome = OK


# ---------------------------------------------------------------------------------------------------------------
# The load


@dataclass
class Config:
    url: str
    api_key: str | None
    model: str
    chat: bool
    prompt: str
    max_tokens: int
    temperature: float | None
    ignore_eos: bool
    usage: bool
    mode: str  # "open" | "closed"
    rate: float | None
    concurrency: int | None
    duration: float
    requests: int | None
    max_in_flight: int
    seed: int | None
    timeout: float
    prompt_tokens: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "stream": True}
        if self.chat:
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.usage:
            body["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


@dataclass
class Progress:
    sent: int = 0
    done: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    errors: int = 0
    rate_limited: int = 0
    dropped: int = 0


class Load:
    """One run: sends the requests, keeps the records and the counters the progress line shows."""

    def __init__(self, cfg: Config, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client
        self.body = cfg.body()
        self.path = "/v1/chat/completions" if cfg.chat else "/v1/completions"
        self.records: list[Record] = []
        self.progress = Progress()
        self.t0 = 0.0

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def one(self, index: int, scheduled: float | None) -> None:
        p = self.progress
        p.sent += 1
        p.in_flight += 1
        p.max_in_flight = max(p.max_in_flight, p.in_flight)
        record = Record(index=index, start_s=self.now(), scheduled_s=scheduled)
        self.records.append(record)
        try:
            with trio.move_on_after(self.cfg.timeout) as scope:
                await self._send(record)
            if scope.cancelled_caught:
                record.outcome, record.error = ERROR, f"timed out after {self.cfg.timeout:g} s"
        except Exception as exc:  # any failure of one request is that request's error
            record.outcome, record.error = ERROR, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            record.e2e_s = self.now() - record.start_s
            p.in_flight -= 1
            p.done += 1
            p.errors += record.outcome == ERROR
            p.rate_limited += record.outcome == RATE_LIMITED

    async def _send(self, record: Record) -> None:
        started = self.now()
        async with self.client.stream("POST", self.path, json=self.body) as response:
            record.status = response.status_code
            if response.status_code == 429:
                record.outcome = RATE_LIMITED
                record.retry_after = response.headers.get("retry-after")
                await response.aread()
                return
            if not 200 <= response.status_code < 300:
                body = (await response.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status_code}: {body[:200]}"
                return
            decoder = SseDecoder()
            reader = StreamReader(chat=self.cfg.chat, started=started)
            async for line in response.aiter_lines():
                data = decoder.feed(line)
                if data is not None:
                    reader.event(data, self.now())
            data = decoder.close()
            if data is not None:
                reader.event(data, self.now())
            reader.fill(record)

    async def open_loop(self) -> None:
        cfg = self.cfg
        assert cfg.rate is not None
        schedule = poisson_schedule(cfg.rate, cfg.duration, cfg.seed)
        if cfg.requests is not None:
            schedule = schedule[: cfg.requests]
        async with trio.open_nursery() as nursery:
            for index, at in enumerate(schedule):
                await trio.sleep_until(self.t0 + at)
                if self.progress.in_flight >= cfg.max_in_flight:
                    self.progress.dropped += 1  # not sent: the client would otherwise queue and lie
                    continue
                nursery.start_soon(self.one, index, at)

    async def closed_loop(self) -> None:
        cfg = self.cfg
        assert cfg.concurrency is not None
        counter = iter(range(sys.maxsize))

        async def worker() -> None:
            while self.now() < cfg.duration and (cfg.requests is None or self.progress.sent < cfg.requests):
                await self.one(next(counter), None)

        async with trio.open_nursery() as nursery:
            for _ in range(cfg.concurrency):
                nursery.start_soon(worker)

    def print_progress(self) -> None:
        p = self.progress
        print(
            f"[{self.now():6.1f} s] sent {p.sent}  done {p.done}  in flight {p.in_flight}  errors {p.errors}"
            f"  429 {p.rate_limited}  dropped {p.dropped}",
            file=sys.stderr,
            flush=True,
        )

    async def report_progress(self, quiet: bool) -> None:
        while True:
            await trio.sleep(1)
            if not quiet:
                self.print_progress()

    async def run(self, quiet: bool) -> float:
        """Apply the load; return the elapsed seconds (to the last request's end)."""
        self.t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.report_progress, quiet)
            if self.cfg.mode == "open":
                await self.open_loop()
            else:
                await self.closed_loop()
            nursery.cancel_scope.cancel()
        if not quiet:
            self.print_progress()  # the final counts, however short the run
        return self.now()


# ---------------------------------------------------------------------------------------------------------------
# Report


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"{'':8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'n':>8}",
    ]
    for name, key in (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("e2e", "e2e_ms")):
        d = s[key]
        lines.append(
            f"{name:8}{_fmt(d['p50']):>10}{_fmt(d['p95']):>10}{_fmt(d['p99']):>10}{_fmt(d['mean']):>10}{d['count']:>8}"
        )
    lines.append("")
    lines.append(
        f"requests: sent {s['sent']}, ok {s['ok']}, 429 {s['rate_limited']}, errors {s['errors']},"
        f" dropped {s['dropped']} (max in flight {s['max_in_flight']})"
    )
    lines.append(
        f"throughput: {s['throughput_rps']:.2f} req/s, {s['output_tokens_per_s']:.1f} output tokens/s"
        f" ({s['output_tokens']} tokens in {s['elapsed_s']:.1f} s)"
    )
    if s["retry_after"]:
        lines.append(f"429 Retry-After values: {', '.join(s['retry_after'])}")
    if s["client_lag_ms"]["count"]:
        lines.append(f"client lag (start - arrival): p99 {_fmt(s['client_lag_ms']['p99'])} ms")
    for msg in s["error_messages"][:5]:
        lines.append(f"error: {msg}")
    return "\n".join(lines)


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top`` (steps of 1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def render_svg(records: list[Record], rows: list[dict[str, Any]], title: str = "") -> str:
    """An SVG (written by hand) of the run: above, each request's latency against its start time (a
    ``circle.e2e`` and a ``circle.ttft`` per ok request, a ``circle.rate-limited`` or ``circle.error`` for the
    others at their end-to-end time); below, output tokens/s (``polyline.tokens``) and completed requests/s
    (``polyline.requests``, right axis) per second."""
    w, h, left, right = 960, 640, 70, 70
    top1, bottom1, top2, bottom2 = 50, 320, 380, 600
    span = max(1.0, float(len(rows)))
    x_ticks = _nice_ticks(span)
    x_max = x_ticks[-1]

    def x(t: float) -> float:
        return left + (w - left - right) * t / x_max

    lat_max = max([r.e2e_s * 1000 for r in records] + [1.0])
    lat_ticks = _nice_ticks(lat_max)
    tok_ticks = _nice_ticks(max([row["output_tokens"] for row in rows] + [1.0]))
    req_ticks = _nice_ticks(max([float(row["ok"]) for row in rows] + [1.0]))

    def y(v: float, ticks: list[float], top: float, bottom: float) -> float:
        return bottom - (bottom - top) * v / ticks[-1]

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}"'
        ' font-family="sans-serif" font-size="12">',
        "<style>.e2e{fill:#1f77b4;fill-opacity:.6}.ttft{fill:#ff7f0e;fill-opacity:.6}"
        ".rate-limited{fill:#7f7f7f}.error{fill:#d62728}.tokens{fill:none;stroke:#2ca02c;stroke-width:2}"
        ".requests{fill:none;stroke:#9467bd;stroke-width:2;stroke-dasharray:4 3}"
        ".grid{stroke:#ddd}.axis{stroke:#333}</style>",
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for top, bottom, ticks, label in (
        (top1, bottom1, lat_ticks, "latency (ms)"),
        (top2, bottom2, tok_ticks, "output tokens/s"),
    ):
        for v in ticks:
            yy = y(v, ticks, top, bottom)
            out.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{w - right}" y2="{yy:.1f}"/>')
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
        for t in x_ticks:
            out.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
        out.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{w - right}" y2="{bottom}"/>')
        out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>')
        mid = (top + bottom) / 2
        out.append(f'<text transform="translate(16 {mid}) rotate(-90)" text-anchor="middle">{label}</text>')
        out.append(f'<text x="{(left + w - right) / 2}" y="{bottom + 32}" text-anchor="middle">time (s)</text>')
    for v in req_ticks:
        yy = y(v, req_ticks, top2, bottom2)
        out.append(f'<text x="{w - right + 6}" y="{yy + 4:.1f}">{v:g}</text>')
    out.append(
        f'<text transform="translate({w - 16} {(top2 + bottom2) / 2}) rotate(90)" text-anchor="middle">'
        "completed requests/s</text>"
    )

    def circle(cls: str, t: float, seconds: float, radius: float) -> str:
        cy = y(seconds * 1000, lat_ticks, top1, bottom1)
        return f'<circle class="{cls}" cx="{x(t):.1f}" cy="{cy:.1f}" r="{radius}"/>'

    for r in records:
        if r.outcome == OK:
            out.append(circle("e2e", r.start_s, r.e2e_s, 3))
            if r.ttft_s is not None:
                out.append(circle("ttft", r.start_s, r.ttft_s, 2.5))
        else:
            out.append(circle("rate-limited" if r.outcome == RATE_LIMITED else "error", r.start_s, r.e2e_s, 3))
    for cls, key, ticks in (("tokens", "output_tokens", tok_ticks), ("requests", "ok", req_ticks)):
        points = " ".join(
            f"{x(row['second'] + 0.5):.1f},{y(float(row[key]), ticks, top2, bottom2):.1f}" for row in rows
        )
        out.append(f'<polyline class="{cls}" points="{points}"/>')
    legend = (("e2e", "end to end"), ("ttft", "time to first token"), ("rate-limited", "429"), ("error", "error"))
    for i, (cls, text) in enumerate(legend):
        lx = left + 10 + i * 170
        out.append(f'<rect class="{cls}" x="{lx}" y="{top1 - 16}" width="10" height="10"/>')
        out.append(f'<text x="{lx + 14}" y="{top1 - 7}">{text}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY, else none)")
    p.add_argument("--model", required=True, help="the model name to ask for")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default: /v1/completions)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the prompt text (for --chat: the one user message)")
    prompt.add_argument(
        "--prompt-tokens",
        type=int,
        metavar="N",
        help="a prompt of about N tokens (N times ' the', one token in most BPE vocabularies; results.json has"
        " the prompt_tokens the server counted). Default: 'Write a short story about a robot.'",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (bitnet-actor, vLLM): fixed lengths")
    p.add_argument(
        "--no-usage",
        action="store_true",
        help="do not ask for stream_options.include_usage (output tokens are then counted as text chunks)",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="open loop: Poisson arrivals at this many requests per second")
    mode.add_argument("--concurrency", type=int, help="closed loop: this many workers sending back to back")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals / of work (default 30)")
    p.add_argument("--requests", type=int, help="stop after this many requests (default: the duration decides)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="open loop: arrivals finding this many requests running are dropped and counted (default 256)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0: reproducible)")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds (default 300)")
    p.add_argument("--out", type=Path, help="write DIR/results.json and DIR/latency.svg")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    for name in ("max_tokens", "max_in_flight", "requests", "concurrency", "prompt_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("rate", "duration", "timeout"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name} must be positive")
    return args


def config_from(args: argparse.Namespace) -> Config:
    import os

    if args.prompt is not None:
        prompt = args.prompt
    elif args.prompt_tokens is not None:
        prompt = "the" + " the" * (args.prompt_tokens - 1)
    else:
        prompt = "Write a short story about a robot."
    return Config(
        url=args.url.rstrip("/"),
        api_key=args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY"),
        model=args.model,
        chat=args.chat,
        prompt=prompt,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        usage=not args.no_usage,
        mode="open" if args.rate is not None else "closed",
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        requests=args.requests,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        timeout=args.timeout,
    )


async def run(cfg: Config, quiet: bool = False) -> dict[str, Any]:
    """Run the load of ``cfg``; return results.json's content."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    slots = cfg.max_in_flight if cfg.mode == "open" else cfg.concurrency or 1
    limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
    # No httpx timeouts: the per-request --timeout is a trio deadline around the whole request.
    async with httpx.AsyncClient(base_url=cfg.url, headers=headers, limits=limits, timeout=None) as client:
        load = Load(cfg, client)
        started_at = time.time()
        elapsed = await load.run(quiet)
    records = sorted(load.records, key=lambda r: r.index)
    summary = summarize(records, elapsed, dropped=load.progress.dropped, max_in_flight=load.progress.max_in_flight)
    config = {k: v for k, v in asdict(cfg).items() if k != "api_key"}
    return {
        "config": {**config, "endpoint": load.path, "started_at": started_at},
        "summary": summary,
        "timeline": timeline(records, elapsed),
        "requests": [asdict(r) for r in records],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    results = trio.run(run, cfg, args.quiet)
    what = f"rate {cfg.rate:g}/s" if cfg.mode == "open" else f"concurrency {cfg.concurrency}"
    print(f"{cfg.mode} loop, {what}, {cfg.duration:g} s, {results['config']['endpoint']}, model {cfg.model}")
    print(table(results["summary"]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        records = [Record(**r) for r in results["requests"]]
        svg = render_svg(records, results["timeline"], title=f"{cfg.model}: {cfg.mode} loop, {what}")
        (args.out / "latency.svg").write_text(svg)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'latency.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
