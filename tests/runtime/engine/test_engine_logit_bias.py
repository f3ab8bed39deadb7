"""logit_bias and allowed_token_ids, and the ValueErrors (naming the field) that invalid
structured_outputs, logit_bias and allowed_token_ids give when a request is added."""

from __future__ import annotations

import pytest

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.structured_outputs import StructuredOutputsParams

PROMPT = "The quick brown fox jumps over the lazy dog."


def generate(engine: LLMEngine, params: SamplingParams) -> list[int]:
    engine.add_request("r", PROMPT, params)
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                return output.outputs[0].token_ids
    raise AssertionError("no output")


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_logit_bias_plus_100_forces_a_token(llama_dir, temperature):
    engine = LLMEngine(llama_dir)
    token = engine.tokenizer.token_to_id("Z")
    ids = generate(engine, SamplingParams(temperature=temperature, seed=1, max_tokens=10, ignore_eos=True,
                                          logit_bias={str(token): 100}))  # OpenAI sends the keys as strings
    assert ids == [token] * 10


def test_logit_bias_minus_100_bans_the_greedy_choice(llama_dir):
    engine = LLMEngine(llama_dir)
    plain = generate(engine, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    banned = plain[0]
    ids = generate(engine, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logit_bias={banned: -100}))
    assert banned not in ids and ids != plain


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_allowed_token_ids_restrict_the_output(llama_dir, temperature):
    engine = LLMEngine(llama_dir)
    allowed = [engine.tokenizer.token_to_id(c) for c in "abc"]
    ids = generate(engine, SamplingParams(temperature=temperature, seed=2, max_tokens=24, ignore_eos=True,
                                          allowed_token_ids=allowed))
    assert len(ids) == 24 and set(ids) <= set(allowed)


def test_allowed_token_ids_with_a_grammar_intersect(llama_dir):
    engine = LLMEngine(llama_dir)
    allowed = [engine.tokenizer.token_to_id(c) for c in "ab01"]
    ids = generate(engine, SamplingParams(temperature=1.0, seed=3, max_tokens=24, allowed_token_ids=allowed,
                                          structured_outputs=StructuredOutputsParams(regex="[a-z]{4}")))
    assert engine.tokenizer.decode(ids) in {a + b + c + d for a in "ab" for b in "ab" for c in "ab" for d in "ab"}


@pytest.mark.parametrize("structured_outputs, field", [
    (StructuredOutputsParams(json={"type": "nonsense"}), "structured_outputs.json"),
    (StructuredOutputsParams(json="{not json"), "structured_outputs.json"),
    (StructuredOutputsParams(regex="a("), "structured_outputs.regex"),
    (StructuredOutputsParams(grammar="start: undefined_rule"), "structured_outputs.grammar"),
], ids=["schema", "schema-string", "regex", "grammar"])
def test_invalid_constraint_is_refused_at_add_request(llama_dir, structured_outputs, field):
    engine = LLMEngine(llama_dir)
    with pytest.raises(ValueError, match=field):
        engine.add_request("r", PROMPT, SamplingParams(structured_outputs=structured_outputs))
    assert not engine.has_unfinished_requests() and "r" not in engine.requests


@pytest.mark.parametrize("kwargs, field", [
    ({}, "exactly one"),
    ({"regex": "a", "choice": ["a"]}, "exactly one"),
    ({"choice": []}, "structured_outputs.choice"),
    ({"choice": "ab"}, "structured_outputs.choice"),
    ({"choice": ["a", ""]}, "structured_outputs.choice"),
    ({"json": 3}, "structured_outputs.json"),
    ({"regex": 3}, "structured_outputs.regex"),
])
def test_malformed_structured_outputs(kwargs, field):
    with pytest.raises(ValueError, match=field):
        StructuredOutputsParams(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"logit_bias": {5: 100.5}}, "logit_bias values must be in"),
    ({"logit_bias": {"x": 1.0}}, "logit_bias token ids"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": ["a"]}, "allowed_token_ids"),
    ({"structured_outputs": {"regex": "a"}}, "structured_outputs must be a StructuredOutputsParams"),
])
def test_malformed_sampling_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"logit_bias": {10**6: 1.0}}, "logit_bias token ids must be in"),
    ({"allowed_token_ids": [1, -1]}, "allowed_token_ids token ids must be in"),
])
def test_token_ids_outside_the_vocabulary_are_refused(llama_dir, kwargs, field):
    with pytest.raises(ValueError, match=field):
        LLMEngine(llama_dir).add_request("r", PROMPT, SamplingParams(**kwargs))
