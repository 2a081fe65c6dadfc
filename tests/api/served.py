"""A real server on a loopback port, serving a tiny model built by the tests, with an organization and keys."""

from __future__ import annotations

import base64
import json
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from bitnet_actor.config import Settings
from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.stores.postgres import open_database
from bitnet_actor.system import run_system

TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def build_model_dir(root: Path, *, seed: int = 0, layers: int = 2, context: int = 256) -> Path:
    """A tiny random BitNet checkpoint (by transformers) with a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tests.engine.hf_models import make_checkpoint

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = []
    for name in ("json/__init__.py", "textwrap.py", "string.py", "functools.py"):
        text.extend((stdlib / name).read_text(encoding="utf-8").splitlines())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=480, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    make_checkpoint(
        root,
        seed=seed,
        sizes={"vocab_size": tok.get_vocab_size(), "max_position_embeddings": context, "num_hidden_layers": layers},
    )
    # Soften the random logits (tied embeddings of std 1 make every distribution one-hot), so that sampling
    # with different seeds takes different paths.
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(root / "model.safetensors"))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] * 0.1
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "chat_template": TEMPLATE,
                "model_max_length": context,
            }
        )
    )
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(bos_token_id=bos, eos_token_id=tok.token_to_id("<|eot_id|>"))
    (root / "config.json").write_text(json.dumps(cfg))
    return root


@dataclass
class Served:
    url: str
    key: str
    org_id: Any
    other_key: str  # a key of a second organization
    no_scope_key: str  # a key without the inference scope
    settings: Settings
    stop: trio.Event


def _org_with_key(dsn: str, name: str, scopes: list[str], plan: str = "pro") -> tuple[Any, str]:
    """Create an organization (with its owner) on ``plan`` and one key through the services, as ``bitnet-actor
    admin`` does: in a worker thread with a trio-asyncio loop of its own (the server's loop belongs to its task).
    The serving tests run on the pro plan: the free plan's 60 requests a minute and 4 per key at once would
    refuse their floods (the limits have tests of their own)."""

    async def create() -> tuple[Any, str]:
        async with trio_asyncio.open_loop(), open_database(dsn, min_size=1, max_size=1) as db:
            org, _, _ = await tenancy.admin_create_org(db, name=name, owner_email=f"owner@{name}.example.com")
            await plans.set_org_plan(db, org.id, plan)
            secret, _ = await api_keys.create_key(
                db, org_id=org.id, name="test", scopes=scopes, actor=audit.SYSTEM_ACTOR
            )
        return org.id, secret

    return trio.run(create)


@asynccontextmanager
async def serve(
    pg_dsn: str, redis_url: str, data_dir: Path, models: dict[str, Path], **extra: Any
) -> AsyncIterator[Served]:
    import uuid

    # The same secret key as the other tests' app: they share the database's JWT signing keys.
    extra.setdefault("secret_key", base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("="))
    settings = Settings(
        data_dir=data_dir,
        port=extra.pop("port", 0),  # a fixed one when the base URL must be known before the start (SAML)
        database_url=pg_dsn,
        redis_url=redis_url,
        no_demo_model=True,
        models=",".join(f"{n}={p}" for n, p in models.items()),
        **{"shutdown_grace": 2, **extra},
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: run_system(settings, stop=stop, handle_signals=False, task_status=task_status)
        )
        suffix = uuid.uuid4().hex[:8]
        org_id, key = await trio.to_thread.run_sync(_org_with_key, pg_dsn, f"acme-{suffix}", ["inference"])
        _, other = await trio.to_thread.run_sync(_org_with_key, pg_dsn, f"globex-{suffix}", ["inference"])
        _, no_scope = await trio.to_thread.run_sync(_org_with_key, pg_dsn, f"initech-{suffix}", ["models:read"])
        yield Served(binds[0], key, org_id, other, no_scope, settings, stop)
        stop.set()
