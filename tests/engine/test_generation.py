"""Generation: batched steps equal solo runs, sampling parameters, stop strings, logprobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import Model, SamplingParams, load_model
from bitnet_actor.engine.sampling import Sampler

if TYPE_CHECKING:
    from pathlib import Path


class CharDecoder:
    def __init__(self, tok: CharTokenizer) -> None:
        self.tok = tok

    def push(self, token_id: int) -> str:
        return self.tok.decode([token_id])


class CharTokenizer:
    """Token i is the letter chr(97 + i % 26) (enough to test text and stop strings)."""

    eos_token_ids: frozenset[int] = frozenset()
    bos_token_id = None
    vocab_size = 301

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)

    def incremental_decoder(self) -> CharDecoder:
        return CharDecoder(self)


@pytest.fixture(scope="module")
def model(bitnet_dir: Path) -> Model:
    m = load_model(bitnet_dir)
    m.tokenizer = CharTokenizer()
    return m


PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 43)), [7], list(range(100, 120))]


def _solo(model: Model, prompt: list[int], n: int, **kw: object) -> list[int]:
    return list(model.generate(prompt, max_tokens=n, temperature=0, **kw))  # type: ignore[arg-type]


def test_batch_equals_alone(model: Model) -> None:
    alone = [_solo(model, p, 12) for p in PROMPTS]
    seqs = [model.new_sequence(p, SamplingParams(max_tokens=12, temperature=0)) for p in PROMPTS]
    steps = 0
    while not all(s.finished for s in seqs):
        model.step(seqs, prefill_chunk=8)  # chunked prefill mixed with decodes of the short prompts
        steps += 1
    assert [s.output_ids for s in seqs] == alone
    assert all(s.finish_reason == "length" for s in seqs)
    assert steps > 12


def test_staggered_batch_equals_alone(model: Model) -> None:
    alone = [_solo(model, p, 10) for p in PROMPTS]
    seqs = [model.new_sequence(p, SamplingParams(max_tokens=10, temperature=0)) for p in PROMPTS]
    running: list = []
    i = 0
    while i < len(seqs) or any(not s.finished for s in running):
        if i < len(seqs):
            running.append(seqs[i])
            i += 1
        model.step(running)
    assert [s.output_ids for s in seqs] == alone


def test_step_outputs(model: Model) -> None:
    seq = model.new_sequence(
        list(range(20)), SamplingParams(max_tokens=3, temperature=0, logprobs=True, top_logprobs=4)
    )
    first = model.step([seq], prefill_chunk=8)
    assert first[0].token_id is None
    assert not first[0].finished
    model.step([seq], prefill_chunk=8)
    out = model.step([seq], prefill_chunk=8)[0]
    assert out.token_id is not None
    assert out.text == chr(97 + out.token_id % 26)
    assert out.logprob is not None
    assert out.logprob <= 0
    assert out.top_logprobs is not None
    assert len(out.top_logprobs) == 4
    assert out.top_logprobs[0][0] == out.token_id  # greedy picks the most likely
    assert out.top_logprobs[0][1] == pytest.approx(out.logprob)
    probs = [lp for _, lp in out.top_logprobs]
    assert probs == sorted(probs, reverse=True)
    while not seq.finished:
        out = model.step([seq])[0]
    assert out.finish_reason == "length"
    assert len(seq.output_ids) == 3
    assert seq.text == "".join(chr(97 + t % 26) for t in seq.output_ids)
    assert model.step([seq]) == []


def test_seeded_sampling_is_reproducible(model: Model) -> None:
    a = list(model.generate([1, 2, 3], max_tokens=20, temperature=20.0, seed=42))
    b = list(model.generate([1, 2, 3], max_tokens=20, temperature=20.0, seed=42))
    c = list(model.generate([1, 2, 3], max_tokens=20, temperature=20.0, seed=43))
    assert a == b
    assert a != c


def test_top_k_1_is_greedy(model: Model) -> None:
    greedy = _solo(model, [4, 5, 6], 15)
    assert list(model.generate([4, 5, 6], max_tokens=15, temperature=0.8, top_k=1, seed=1)) == greedy
    assert list(model.generate([4, 5, 6], max_tokens=15, temperature=0.8, top_p=1e-6, seed=1)) == greedy
    assert list(model.generate([4, 5, 6], max_tokens=15, temperature=0.8, min_p=1.0, seed=1)) == greedy


def test_logit_bias_forces_a_token(model: Model) -> None:
    out = list(model.generate([4, 5, 6], max_tokens=6, temperature=0, logit_bias={77: 100.0}))
    assert out == [77] * 6
    out = list(model.generate([4, 5, 6], max_tokens=6, temperature=1.0, seed=3, logit_bias={78: 100.0}))
    assert out == [78] * 6


def test_penalties() -> None:
    logits = np.array([3.0, 2.9, 2.0, -1.0, -1.2], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0), 5, [4]).sample(logits) == 0
    # repetition: token 0 in the prompt, 3.0 / 2 < 2.9
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), 5, [0]).sample(logits) == 1
    # a negative logit is multiplied: token 3 in the prompt drops below token 4
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0, logit_bias={3: 5.0, 4: 5.0}), 5, [3])
    assert s.sample(logits) == 4
    # presence: once per token seen in the output; frequency: per occurrence
    s = Sampler(SamplingParams(temperature=0, presence_penalty=0.2), 5, [])
    s.record(0)
    assert s.sample(logits) == 1
    s = Sampler(SamplingParams(temperature=0, frequency_penalty=0.3), 5, [])
    s.record(0)
    assert s.sample(logits) == 1
    s.record(1)
    s.record(1)
    s.record(1)
    assert s.sample(logits) == 0  # 3.0 - 0.3 > 2.9 - 0.9
    np.testing.assert_array_equal(logits, np.array([3.0, 2.9, 2.0, -1.0, -1.2], dtype=np.float32))  # unmodified


def test_sampling_follows_the_distribution() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, seed=0), 4, [])
    counts = np.bincount([s.sample(logits) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    s = Sampler(SamplingParams(temperature=1.0, seed=0, top_p=0.7), 4, [])
    assert {s.sample(logits) for _ in range(500)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, seed=0, min_p=0.35), 4, [])
    assert {s.sample(logits) for _ in range(500)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, seed=0, top_k=3), 4, [])
    assert {s.sample(logits) for _ in range(500)} == {0, 1, 2}


def test_stop_strings_trim_output(model: Model) -> None:
    full = _solo(model, [9, 8, 7], 20)
    text = "".join(chr(97 + t % 26) for t in full)
    stop = text[5:7]
    cut = text.find(stop)
    seq = model.new_sequence([9, 8, 7], SamplingParams(max_tokens=20, temperature=0, stop=(stop, "zzzzzz")))
    streamed = ""
    while not seq.finished:
        for out in model.step([seq]):
            streamed += out.text
    assert seq.finish_reason == "stop"
    assert streamed == seq.text == text[:cut]


def test_stop_token_ids(model: Model) -> None:
    full = _solo(model, [9, 8, 7], 10)
    out = _solo(model, [9, 8, 7], 10, stop_token_ids=(full[4],))
    assert out == full[: full.index(full[4])]


def test_release_frees_cache(model: Model) -> None:
    seq = model.new_sequence([1, 2], SamplingParams(max_tokens=4))
    assert seq.nbytes > 0
    seq.release()
    seq.release()
    assert seq.nbytes == 0
    assert seq.finished
    assert model.step([seq]) == []


def test_q8_output_layer_is_close(bitnet_dir: Path) -> None:
    m = load_model(bitnet_dir)
    ids = list(range(40))
    exact = m.logits(ids)
    m.set_output_layer("q8")
    q8 = m.logits(ids)
    assert m.info.output_layer == "q8"
    rel = np.linalg.norm(q8 - exact) / np.linalg.norm(exact)
    assert 0 < rel < 1e-2


def test_q6_output_layer_is_close(bitnet_dir: Path) -> None:
    m = load_model(bitnet_dir, output="q6")
    assert m.info.output_layer == "q6"
    ids = list(range(40))
    q6 = m.logits(ids)
    per_token = m.bytes_per_token
    m.set_output_layer("q8")
    q8_bytes = m.bytes_per_token
    m.set_output_layer("exact")
    exact = m.logits(ids)
    rel = np.linalg.norm(q6 - exact) / np.linalg.norm(exact)
    assert 0 < rel < 4e-2  # ~2% (6 bits a weight, a scale per 16); q8 ~1%
    assert (np.argmax(q6, 1) == np.argmax(exact, 1)).mean() >= 0.9
    assert per_token < q8_bytes < m.bytes_per_token
    with pytest.raises(ValueError, match="'exact', 'q8' or 'q6'"):
        m.set_output_layer("q4")
    assert m.output_layer == "exact"  # unchanged by the refused call


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"logit_bias": {1: 500.0}}, "logit_bias"),
        ({"seed": -1}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_sampling_params_validation(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


def test_unknown_sampling_parameter(model: Model) -> None:
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        list(model.generate([1], max_tokens=2, tempreature=0))
