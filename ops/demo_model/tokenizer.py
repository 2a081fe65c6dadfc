"""The demo model's tokenizer: a byte-level BPE with three special tokens, its ``tokenizer_config.json``, the
chat template, and the encoding of the corpus into one token stream.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokenizers import Tokenizer

__all__ = [
    "BOS",
    "CHAT_TEMPLATE",
    "EOS",
    "EOT",
    "SPECIAL_TOKENS",
    "encode_corpus",
    "render_chat",
    "tokenizer_config",
    "train_tokenizer",
]

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, EOT]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with the special tokens, a BOS-adding post-processor and a byte-level decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def tokenizer_config(tok: Tokenizer, context: int) -> dict[str, object]:
    """transformers' ``tokenizer_config.json`` for the trained tokenizer."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }


def render_chat(question: str) -> str:
    """The chat template rendered for one user turn with the generation prompt (what a server sends)."""
    return f"{BOS}User: {question}{EOT}Assistant: "


def encode_corpus(tok: Tokenizer, texts: Sequence[str], chats: Sequence[tuple[str, str]], seed: int) -> torch.Tensor:
    """Tokenize documents into one stream: ``BOS text EOS`` and ``BOS User: q EOT Assistant: a EOT EOS``.

    A chat answer is encoded apart from its prompt, as at inference: the prompt ends with the template's
    "Assistant: " (its trailing space one token) and the answer starts without a leading space.

    Args:
        tok: the tokenizer.
        texts: plain-text documents.
        chats: (question, answer) pairs.
        seed: seeds the interleaving order.

    Returns:
        int64 token ids.
    """
    eos, eot = tok.token_to_id(EOS), tok.token_to_id(EOT)
    seqs: list[list[int]] = [[*e.ids, eos] for e in tok.encode_batch(list(texts))]
    prompts = tok.encode_batch([render_chat(q) for q, _ in chats], add_special_tokens=False)
    answers = tok.encode_batch([a for _, a in chats], add_special_tokens=False)
    seqs.extend(p.ids + a.ids + [eot, eos] for p, a in zip(prompts, answers, strict=True))
    random.Random(seed).shuffle(seqs)
    return torch.tensor([t for s in seqs for t in s], dtype=torch.long)
