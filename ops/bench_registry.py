"""Benchmark of the model registry: uploads, encryption at rest, conversion, and upload-to-first-token.

Starts a server (embedded stores, a fresh data dir), writes a random BitNet model of a real shape (the
2B-4T shape is a ~1.3 GB upload), and checks correctness before timing anything: the published version's
sha256 is the file's, its first completion comes back, a converted file loads with its tokenizer. Then, as
medians of ``--repeats`` runs, with a baseline measured in the same run:

- upload throughput (MB/s) of one streamed ``POST .../models`` against a plain local copy + sha256 of the same
  file, and the server's peak RSS above idle while it runs (goal: < 100 MB above idle);
- encryption at rest: the object store's put of the file encrypted vs plain;
- a TQ2_0 conversion's throughput (parameters/s), with and without a progress callback;
- time from an upload's 201 to the first token of a completion naming it (the copy, the load, one token).

    python ops/bench_registry.py [--shape 2b4t] [--convert-shape 700m] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import SHAPES, write_random_model

_CHUNK = 4 << 20


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def tar_model(model_dir: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tf:
        for path in sorted(model_dir.iterdir()):
            tf.add(path, arcname=path.name)
    return out


def write_bpe_tokenizer(root: Path) -> None:
    """A small byte-level BPE tokenizer (GGUF metadata holds BPE vocabularies; the writer pads the rest)."""
    import sysconfig

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = (stdlib / "textwrap.py").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(text, trainer)
    tok.save(str(root / "tokenizer.json"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plain_copy(src: Path, dst: Path) -> float:
    """The baseline: copy + sha256 + fsync, as an upload's spool does (seconds)."""
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    dst.unlink()
    return time.perf_counter() - t0


def run_cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bitnet_actor", *args], env=env, capture_output=True, check=True, text=True
    ).stdout.strip()


class Server:
    def __init__(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="bench-registry-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.env = {**os.environ, "BITNET_DATA_DIR": str(self.data), "BITNET_NO_DEMO_MODEL": "1"}
        for name in ("BITNET_DATABASE_URL", "BITNET_REDIS_URL", "BITNET_S3_BUCKET"):
            self.env.pop(name, None)
        log = (self.data / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bitnet_actor", "serve", "--port", str(port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"the server did not become ready; see {self.data / 'serve.log'}")
        run_cli(self.env, "admin", "create-org", "--name", "bench", "--owner-email", "bench@example.com")
        run_cli(self.env, "admin", "edit-plan", "--name", "pro", "--rpm", "none", "--tpm", "none")
        run_cli(self.env, "admin", "set-plan", "--org", "bench", "--plan", "pro")
        self.key = run_cli(
            self.env, "admin", "create-key", "--org", "bench", "--name", "b", "--scopes", "inference,models:write"
        )
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data, ignore_errors=True)


class PeakRss:
    """Samples a process's RSS every 20 ms on a thread while the block runs."""

    def __init__(self, server: Server) -> None:
        self.server, self.peak, self._stop = server, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.peak = self.server.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.server.rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def upload(server: Server, path: Path, name: str, version: str) -> tuple[float, dict[str, object]]:
    def chunks() -> object:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk

    t0 = time.perf_counter()
    r = httpx.post(
        f"{server.url}/api/v1/orgs/current/models",
        params={"name": name, "version": version},
        headers={"Authorization": f"Bearer {server.key}", "Content-Length": str(path.stat().st_size)},
        content=chunks(),  # type: ignore[arg-type]
        timeout=3600,
    )
    elapsed = time.perf_counter() - t0
    if r.status_code != 201:
        raise SystemExit(f"upload failed: {r.status_code} {r.text[:500]}")
    return elapsed, r.json()


def first_token(server: Server, model: str) -> float:
    t0 = time.perf_counter()
    r = httpx.post(
        f"{server.url}/v1/completions",
        headers={"Authorization": f"Bearer {server.key}"},
        json={"model": model, "prompt": [0, 5, 7], "max_tokens": 1, "temperature": 0},
        timeout=3600,
    )
    if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != 1:
        raise SystemExit(f"completion failed: {r.status_code} {r.text[:500]}")
    return time.perf_counter() - t0


def bench_store(path: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Filesystem store put of the file, plain vs encrypted (seconds), in process on a fresh database."""
    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.keys import LocalKeyProvider
    from bitnet_actor.stores.embedded import EmbeddedPostgres
    from bitnet_actor.stores.migrate import migrate
    from bitnet_actor.stores.objects.filesystem import FilesystemObjectStore
    from bitnet_actor.stores.postgres import open_database

    work = Path(tempfile.mkdtemp(prefix="bench-registry-store-"))
    pg = EmbeddedPostgres(work)
    dsn = pg.start()

    async def chunks() -> object:
        fh = await trio.open_file(path, "rb")
        async with fh:
            while chunk := await fh.read(_CHUNK):
                yield chunk

    async def go() -> tuple[list[float], list[float]]:
        import trio_asyncio

        plain_s: list[float] = []
        enc_s: list[float] = []
        async with trio_asyncio.open_loop(), open_database(dsn) as db:
            await migrate(db)
            for i in range(repeats):
                store = FilesystemObjectStore(work / f"objects-{i}", signing_key=b"k" * 32, base_url="http://x")
                t0 = time.perf_counter()
                info = await store.put(chunks())  # type: ignore[arg-type]
                plain_s.append(time.perf_counter() - t0)
                await store.delete(info.key)
                keys = LocalKeyProvider([("bench", b"m" * 32)])
                encrypted = EncryptedObjects(store, db, keys)
                t0 = time.perf_counter()
                stored = await encrypted.put(None, chunks())  # type: ignore[arg-type]
                enc_s.append(time.perf_counter() - t0)
                assert stored.plaintext_sha256 == sha256_of(path), "encrypted put: wrong plaintext sha256"
                await encrypted.delete(None, stored.info.key)
                await store.aclose()
        return plain_s, enc_s

    try:
        return trio.run(go)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def bench_convert(model_dir: Path, repeats: int) -> tuple[int, list[float], list[float]]:
    from bitnet_actor.engine import load_model
    from bitnet_actor.engine.convert import convert_model

    out_root = Path(tempfile.mkdtemp(prefix="bench-registry-convert-"))
    quiet: list[float] = []
    with_progress: list[float] = []
    calls = 0

    def progress(*_: int) -> None:
        nonlocal calls
        calls += 1

    try:
        params = 0
        for i in range(repeats):
            for sink, cb in ((quiet, None), (with_progress, progress)):
                dst = out_root / f"m{i}-{len(sink)}-{cb is None}.gguf"
                t0 = time.perf_counter()
                result = convert_model(model_dir, dst, "tq2_0", progress=cb)
                sink.append(time.perf_counter() - t0)
                params = result.parameter_count
                if i == 0 and cb is None:  # correctness: the output loads with its tokenizer and generates
                    model = load_model(dst)
                    assert model.tokenizer is not None
                    assert len(list(model.generate([0, 5, 7], max_tokens=2, temperature=0, ignore_eos=True))) == 2
                    del model
                dst.unlink()
        assert calls > 0, "the progress callback was never called"
        return params, quiet, with_progress
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2b4t", choices=sorted(SHAPES), help="the uploaded model's shape")
    parser.add_argument("--convert-shape", default="700m", choices=sorted(SHAPES), help="the converted model's shape")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny models, one repeat (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.shape = args.convert_shape = "tiny"
        args.repeats = 1
    work = Path(tempfile.mkdtemp(prefix="bench-registry-models-"))
    server: Server | None = None
    try:
        print(f"writing a random {args.shape} model ...", file=sys.stderr)
        upload_dir = write_random_model(work / args.shape, args.shape)
        archive = tar_model(upload_dir, work / "upload.tar")
        size = archive.stat().st_size
        convert_dir = write_random_model(work / f"convert-{args.convert_shape}", args.convert_shape)
        write_bpe_tokenizer(convert_dir)  # GGUF carries BPE tokenizers  # fmt: skip
        server = Server()
        # correctness first
        _, made = upload(server, archive, "check", "1")
        assert made["sha256"] == sha256_of(archive), "the published sha256 is not the file's"
        cold = first_token(server, "check:1")
        print("correctness: published sha256 = file sha256; a completion came back", file=sys.stderr)

        copies = [plain_copy(archive, work / "copy.bin") for _ in range(args.repeats)]
        uploads: list[float] = []
        peaks: list[int] = []
        ttfts: list[float] = []
        for i in range(args.repeats):
            idle = server.rss()
            with PeakRss(server) as peak:
                elapsed, made = upload(server, archive, f"m{i}", "1")
            uploads.append(elapsed)
            peaks.append(peak.peak - idle)
            # the same bytes share one local copy and one load: these are warm (the cold one is the check's)
            ttfts.append(first_token(server, f"m{i}:1"))
        plain_put, enc_put = bench_store(archive, args.repeats)
        params, quiet, with_progress = bench_convert(convert_dir, args.repeats)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    mb = size / 1e6
    med = statistics.median
    print(f"\nbench_registry on {cpu_name()} ({os.cpu_count()} CPUs); upload {args.shape}: {mb:,.0f} MB;"
          f" convert {args.convert_shape}: {params:,} parameters; medians of {args.repeats}")  # fmt: skip
    rows = [
        ("local copy + sha256 + fsync (baseline)", f"{mb / med(copies):,.0f} MB/s", "1.00x"),
        (
            "upload: streamed POST -> inspected, encrypted, published",
            f"{mb / med(uploads):,.0f} MB/s",
            f"{med(copies) / med(uploads):.2f}x",
        ),
        ("server RSS above idle during an upload (peak)", f"{med(peaks) / 2**20:,.0f} MiB", "goal < 100 MiB"),
        ("store put, plain (baseline)", f"{mb / med(plain_put):,.0f} MB/s", "1.00x"),
        ("store put, encrypted", f"{mb / med(enc_put):,.0f} MB/s", f"{med(plain_put) / med(enc_put):.2f}x"),
        ("TQ2_0 conversion, no progress (baseline)", f"{params / med(quiet) / 1e6:,.1f} M params/s", "1.00x"),
        (
            "TQ2_0 conversion, with progress",
            f"{params / med(with_progress) / 1e6:,.1f} M params/s",
            f"{med(quiet) / med(with_progress):.2f}x",
        ),
        ("upload 201 -> first token (new bytes: decrypt, copy, load)", f"{cold:.2f} s", "one run"),
        ("upload 201 -> first token (the same bytes again: loaded)", f"{med(ttfts):.3f} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value | vs baseline |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, value, ratio in rows:
        print(f"| {name:<{width}} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
