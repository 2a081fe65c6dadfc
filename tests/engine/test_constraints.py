"""Constrained decoding on a tiny model whose own output is not JSON: every constrained output parses and
validates against its schema, over many random schemas; unconstrained sequences in the same batch are
unchanged; unsupported schema features are refused naming them."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitnet_actor.engine import SamplingParams, load_model
from bitnet_actor.engine.constraints import ConstraintError, json_schema_grammar

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the outputs (a test dependency)")
pytest.importorskip("transformers", reason="transformers builds the test model")


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    from tests.api.served import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="bitnet-constraints-"))
    try:
        yield load_model(build_model_dir(root / "tiny"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random schema of the kinds structured output supports, bounded so a random model finishes."""
    kinds = ["string", "integer", "number", "boolean", "enum", "null", "const", "anyOf"]
    if depth < 2:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        out: dict[str, Any] = {"type": "string", "maxLength": rng.randint(0, 6)}
        if rng.random() < 0.3:
            out["minLength"] = rng.randint(0, out["maxLength"])
        if rng.random() < 0.2:
            out = {"type": "string", "pattern": rng.choice(["^[a-z]{1,4}$", "^[0-9]{3}-[0-9]{2}$", "^(yes|no)$"])}
        return out
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "number":
        return {"type": "number", "minimum": -10, "maximum": 10}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", 1, 2.5, True, None, "a b"], rng.randint(1, 4))}
    if kind == "const":
        return {"const": rng.choice(["fixed", 7, False])}
    if kind == "anyOf":
        return {"anyOf": [_random_schema(rng, depth + 1), _random_schema(rng, depth + 1)]}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": _random_schema(rng, depth + 1), "minItems": lo, "maxItems": lo + 2}
    names = rng.sample(["id", "name", "tags", "score", "ok", "meta", "x_y", "émoji"], rng.randint(1, 4))
    props = {n: _random_schema(rng, depth + 1) for n in names}
    required = [n for n in names if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _run(model: Any, params: list[SamplingParams], prompt: str = "Write a value:") -> list[Any]:
    ids = model.tokenizer.encode(prompt)
    seqs = [model.new_sequence(ids, p) for p in params]
    try:
        for _ in range(4096):
            if all(s.finished for s in seqs):
                break
            model.step(seqs)
        return seqs
    finally:
        for s in seqs:
            s.release()


def test_unconstrained_output_is_not_json(model: Any) -> None:
    # the premise: the tiny model's own output never parses, so a valid document is the grammar's doing
    seqs = _run(model, [SamplingParams(temperature=1.0, seed=s, max_tokens=40) for s in range(8)])
    for s in seqs:
        with pytest.raises(json.JSONDecodeError):
            json.loads(s.text)


@pytest.mark.parametrize("batch", range(10))
def test_random_schemas_always_parse_and_validate(model: Any, batch: int) -> None:
    rng = random.Random(1000 + batch)
    schemas = [_random_schema(rng) for _ in range(6)]
    params = [
        SamplingParams(temperature=1.0, seed=batch * 10 + i, max_tokens=240, grammar=json_schema_grammar(sc))
        for i, sc in enumerate(schemas)
    ]
    for p in params:
        assert p.grammar is not None
        model.constraints.check(p.grammar)
    for s, schema in zip(_run(model, params), schemas, strict=True):
        assert s.finish_reason == "stop", (schema, s.text)
        doc = json.loads(s.text)
        jsonschema.validate(doc, schema)


def test_json_object_mode_gives_an_object(model: Any) -> None:
    grammar = json_schema_grammar(None)
    seqs = _run(model, [SamplingParams(temperature=0.7, seed=i, max_tokens=240, grammar=grammar) for i in range(4)])
    for s in seqs:
        if s.finish_reason == "stop":
            assert isinstance(json.loads(s.text), dict)
        else:  # a free-form object may run to max_tokens: then it is a cut-short prefix of one
            assert s.finish_reason == "length" and s.text.startswith("{")


def test_unconstrained_rows_unchanged_in_a_mixed_batch(model: Any) -> None:
    bounded = {"type": "integer", "minimum": 0, "maximum": 999}
    grammar = json_schema_grammar({"type": "object", "properties": {"a": bounded}, "required": ["a"]})
    plain = [SamplingParams(temperature=0.0, max_tokens=24), SamplingParams(temperature=1.0, seed=5, max_tokens=24)]
    alone = [s.output_ids for s in _run(model, plain)]
    mixed = _run(model, [plain[0], SamplingParams(temperature=0.0, max_tokens=50, grammar=grammar), plain[1]])
    assert [mixed[0].output_ids, mixed[2].output_ids] == alone
    assert json.loads(mixed[1].text)["a"] is not None


def test_greedy_constrained_is_deterministic_and_logprobs_stay_the_models(model: Any) -> None:
    grammar = json_schema_grammar({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2})
    p = SamplingParams(temperature=0.0, max_tokens=30, grammar=grammar, logprobs=True)
    a, b = _run(model, [p, p])
    assert a.output_ids == b.output_ids
    assert len(json.loads(a.text)) == 2


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "not": {"required": ["a"]}}, "not"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "made-up"}, "made-up"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
        ({"if": {"type": "string"}, "then": {"maxLength": 2}}, "if"),
    ],
)
def test_unsupported_features_are_named(model: Any, schema: dict[str, Any], named: str) -> None:
    with pytest.raises(ConstraintError) as info:
        model.constraints.check(json_schema_grammar(schema))
    assert named in str(info.value)


def test_bad_schemas_refused(model: Any) -> None:
    with pytest.raises(ConstraintError, match="not plain JSON"):
        json_schema_grammar({"type": "object", "x": float("nan")})
    with pytest.raises(ConstraintError, match="regex"):
        model.constraints.check(json_schema_grammar({"type": "string", "pattern": "("}))
