"""Tokenizers that are valid for transformers but unusual: each must load (alone and with a model), encode and
decode as transformers does, and refuse text its vocabulary cannot cover with a clear TokenizerError.

WordLevel without an unknown token, Unigram (SentencePiece-style, Metaspace), byte-fallback BPE, and added
tokens that overlap one another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bitnet_actor.engine import load_model
from bitnet_actor.engine.errors import UnsupportedModelError
from bitnet_actor.engine.tokenizer import Tokenizer, TokenizerError
from tests.engine.hf_models import make_checkpoint

transformers = pytest.importorskip("transformers", reason="the oracle tokenizers are transformers'")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "def main(): return 42",
    "zeta alpha beta gamma delta epsilon",
    "naïve café — déjà vu, 東京 and ünïcödé",
    "import os\nprint(os.getcwd())",
] * 20


def _save(tok: tokenizers.Tokenizer, path: Path, config: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **config})
    )
    return path


def word_level(path: Path) -> Path:
    """Words only, no unknown token, and no "a" in the vocabulary (the case that used to fail to load)."""
    words = ["<s>", "</s>", "hello", "world", "the", "fox", "def", "return", "x"]
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return _save(tok, path, {"bos_token": "<s>", "eos_token": "</s>"})


def unigram(path: Path) -> Path:
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return _save(tok, path, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def byte_fallback_bpe(path: Path) -> Path:
    """Llama-2 style: BPE with byte fallback to <0xNN> tokens, the decoder joining byte runs."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False)
    ascii_only = [line.encode("ascii", "ignore").decode() for line in CORPUS]  # the rest falls back to bytes
    tok.train_from_iterator(ascii_only, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return _save(tok, path, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def overlapping_added(path: Path) -> Path:
    """Byte-level BPE with added tokens that are prefixes of one another, special and not."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken("<tool>", special=True), AddedToken("<tool_call>", special=True)])
    tok.add_tokens([AddedToken("<tool_call_end>", special=False), AddedToken("fox jumps", special=False)])
    return _save(tok, path, {"bos_token": None, "eos_token": "<|endoftext|>"})


BUILDERS = {
    "word_level": word_level,
    "unigram": unigram,
    "byte_fallback_bpe": byte_fallback_bpe,
    "overlapping_added": overlapping_added,
}
TEXTS = {
    "word_level": ["hello world", "the fox", "def x return x", "  hello   world  ", ""],
    "unigram": [*CORPUS[:5], "unseen words: quux ☃", ""],
    "byte_fallback_bpe": [*CORPUS[:5], "emoji 🦊 and 東京", ""],
    "overlapping_added": [
        "<tool_call>{}<tool_call_end> then <tool> and <tool_call>",
        "the quick brown fox jumps over",
        "<tool><tool_call><tool_call_end><|endoftext|>",
        "",
    ],
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def unusual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, BUILDERS[name](tmp_path_factory.mktemp(name))


def test_loads_and_matches_transformers(unusual: tuple[str, Path]) -> None:
    name, path = unusual
    ours = Tokenizer.from_hf_dir(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    for text in TEXTS[name]:
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == hf.encode(text, add_special_tokens=add), (text, add)
        ids = hf.encode(text, add_special_tokens=True)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
    probe = hf.encode(TEXTS[name][0], add_special_tokens=True)
    assert ours.add_bos_token == (hf.bos_token_id is not None and probe[:1] == [hf.bos_token_id])


def test_streamed_decode_equals_whole_decode(unusual: tuple[str, Path]) -> None:
    name, path = unusual
    ours = Tokenizer.from_hf_dir(path)
    for text in TEXTS[name]:
        ids = ours.encode(text, add_special_tokens=False)
        decoder = ours.incremental_decoder()
        streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
        assert streamed == ours.decode(ids), text


def test_word_level_refuses_words_it_lacks(tmp_path: Path) -> None:
    ours = Tokenizer.from_hf_dir(word_level(tmp_path / "wl"))
    assert ours.add_bos_token and ours.bos_token_id == 0
    with pytest.raises(TokenizerError, match="cannot encode the text"):
        ours.encode("hello zebra")
    with pytest.raises(TokenizerError, match="cannot encode the text"):
        ours.encode_plain("zebra")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_model_with_it_loads_and_generates(name: str, tmp_path: Path) -> None:
    root = make_checkpoint(tmp_path / "model", sizes={"vocab_size": 512})
    BUILDERS[name](root)
    model = load_model(root)
    assert model.tokenizer.vocab_size <= model.vocab_size
    ids = model.tokenizer.encode(TEXTS[name][0])
    assert ids and all(0 <= i < model.vocab_size for i in ids)
    out = list(model.generate(ids, max_tokens=4, temperature=0, ignore_eos=True))
    assert len(out) == 4


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path) -> None:
    root = make_checkpoint(tmp_path / "model", sizes={"vocab_size": 301})
    byte_fallback_bpe(root)  # 400 tokens
    with pytest.raises(
        UnsupportedModelError, match="the tokenizer has 400 tokens but the model's embedding has only 301"
    ):
        load_model(root)
