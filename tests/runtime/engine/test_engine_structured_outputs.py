"""Structured outputs: what the grammar mask guarantees on a random-weight model (valid JSON against
the schema, a full regex match, one of the choices), through sampling, batching with unconstrained
requests, n > 1, preemption, prefix-cache hits and a prefill/decode handoff."""

from __future__ import annotations

import json
import pickle
import re

import jsonschema
import numpy as np
import pytest
import torch

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.structured_outputs import StructuredOutputsParams, unpack_bits, unpack_on_device

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "ok": {"type": "boolean"}, "tag": {"enum": ["x", "y"]}},
    "required": ["name", "age", "ok", "tag"], "additionalProperties": False,
}
REGEX = r"[a-z]{3}-[0-9]{2}"
LARK = 'start: "(" NUM ("+" NUM)? ")"\nNUM: /[0-9]{1,3}/'
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "héllo wörld 世界 🙂 and more words here", "1 2 3"]
# Every constraint here has a bounded language, so any path through it ends well within max_tokens.
BOUNDED = {
    "json": StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
    "json_str": StructuredOutputsParams(json=json.dumps(SCHEMA), disable_any_whitespace=True),
    "regex": StructuredOutputsParams(regex=REGEX),
    "choice": StructuredOutputsParams(choice=["yes", "no", "maybe so"]),
    "grammar": StructuredOutputsParams(grammar=LARK),
}


def drain(engine: LLMEngine) -> dict[str, object]:
    final = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                final[output.request_id] = output
    return final


def check(kind: str, text: str) -> None:
    """What the mask guarantees of a finished output, per constraint kind."""
    if kind.startswith("json"):
        jsonschema.validate(json.loads(text), SCHEMA)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in ("yes", "no", "maybe so")
    else:
        assert re.fullmatch(r"\([0-9]{1,3}(\+[0-9]{1,3})?\)", text), text


def sampling(kind: str, temperature: float, seed: int | None = 0, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=temperature, seed=seed, max_tokens=96, structured_outputs=BOUNDED[kind],
                          **kwargs)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("kind", list(BOUNDED))
def test_output_satisfies_constraint(llama_dir, kind, temperature):
    engine = LLMEngine(llama_dir)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, sampling(kind, temperature, seed=i))
    for output in drain(engine).values():
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text  # the grammar completed, not max_tokens
        check(kind, completion.text)


def test_mixed_batch_leaves_unconstrained_requests_alone(llama_dir):
    plain = SamplingParams(temperature=0.8, seed=5, max_tokens=24, ignore_eos=True)
    alone = LLMEngine(llama_dir)
    alone.add_request("plain", PROMPTS[0], plain)
    expected = drain(alone)["plain"].outputs[0].token_ids
    engine = LLMEngine(llama_dir)
    engine.add_request("plain", PROMPTS[0], plain)
    for kind in BOUNDED:
        engine.add_request(kind, PROMPTS[1], sampling(kind, 0.8, seed=1))
    outputs = drain(engine)
    assert outputs["plain"].outputs[0].token_ids == expected
    for kind in BOUNDED:
        check(kind, outputs[kind].outputs[0].text)


def test_n_samples_each_follow_the_grammar(llama_dir):
    engine = LLMEngine(llama_dir)
    engine.add_request("r", PROMPTS[0], sampling("json", 1.0, seed=3, n=4))
    completions = drain(engine)["r"].outputs
    assert len(completions) == 4
    for completion in completions:
        check("json", completion.text)


def test_json_object_closes_when_biased_to_a_brace(llama_dir):
    engine = LLMEngine(llama_dir)
    brace = engine.tokenizer.token_to_id("}")
    engine.add_request("r", PROMPTS[0], SamplingParams(
        temperature=0, max_tokens=16, logit_bias={brace: 100},
        structured_outputs=StructuredOutputsParams(json_object=True, disable_any_whitespace=True)))
    completion = drain(engine)["r"].outputs[0]
    assert completion.text == "{}" and completion.finish_reason == "stop"
    assert json.loads(completion.text) == {}


def constrained_outputs(engine: LLMEngine, one_at_a_time: bool) -> dict[str, list[int]]:
    outputs = {}
    for seed, kind in enumerate(["json", "json", "grammar", "json_str"]):
        engine.add_request(f"{kind}{seed}", PROMPTS[0], sampling(kind, 1.0, seed=seed))
        if one_at_a_time:
            outputs.update(drain(engine))
    outputs.update(drain(engine))
    return {rid: output.outputs[0].token_ids for rid, output in outputs.items()}


@pytest.mark.parametrize("enable_prefix_caching", [False, True], ids=["recompute", "recompute-prefix-cache"])
def test_preemption_keeps_the_grammar_state(llama_dir, enable_prefix_caching):
    expected = constrained_outputs(LLMEngine(llama_dir), one_at_a_time=True)
    engine = LLMEngine(llama_dir, num_kvcache_blocks=30, block_size=4, enable_prefix_caching=enable_prefix_caching)
    assert constrained_outputs(engine, one_at_a_time=False) == expected
    assert engine.stats()["num_preemptions"] > 0


def test_prefix_cache_hit_gives_the_same_constrained_output(llama_dir):
    engine = LLMEngine(llama_dir, block_size=4)
    outputs = []
    for i in range(2):
        engine.add_request(f"r{i}", PROMPTS[0], sampling("json", 1.0, seed=4))
        outputs.append(drain(engine)[f"r{i}"])
    assert outputs[1].metrics["num_cached_tokens"] > 0
    assert outputs[1].outputs[0].token_ids == outputs[0].outputs[0].token_ids
    check("json", outputs[1].outputs[0].text)


def disaggregated(model_dir: str, params: SamplingParams) -> dict[str, object]:
    prefill = LLMEngine(model_dir, role="prefill")
    decode = LLMEngine(model_dir, role="decode")
    for i, prompt in enumerate(PROMPTS):
        prefill.add_request(f"r{i}", prompt, params)
    for rid, output in drain(prefill).items():
        pkg = pickle.loads(pickle.dumps(output.kv_package))  # what crossing the object store does
        assert pkg.params.structured_outputs == params.structured_outputs
        decode.add_request(rid, {"prompt_token_ids": pkg.prompt_token_ids}, pkg.params, kv_package=pkg)
    outputs = drain(decode)
    assert decode.stats()["num_prompt_tokens_computed"] == 0
    return outputs


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "seeded"])
@pytest.mark.parametrize("kind", ["json", "grammar"])
def test_prefill_plus_decode_equals_both(llama_dir, kind, temperature):
    params = sampling(kind, temperature, seed=11)
    engine = LLMEngine(llama_dir)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    expected = drain(engine)
    got = disaggregated(llama_dir, params)
    for rid, output in expected.items():
        assert got[rid].outputs[0].token_ids == output.outputs[0].token_ids
        assert got[rid].outputs[0].finish_reason == output.outputs[0].finish_reason == "stop"
        check(kind, got[rid].outputs[0].text)


def test_prefill_role_finishes_when_the_first_token_completes_the_grammar(llama_dir):
    prefill = LLMEngine(llama_dir, role="prefill")
    params = SamplingParams(temperature=0, max_tokens=8, structured_outputs=StructuredOutputsParams(choice=["a", "b"]))
    prefill.add_request("r", PROMPTS[0], params)
    output = drain(prefill)["r"]
    assert output.kv_package is None
    assert output.outputs[0].finish_reason == "stop" and output.outputs[0].text in ("a", "b")


def test_device_unpack_matches_numpy_unpack():
    words = np.random.default_rng(0).integers(-2**31, 2**31 - 1, size=(3, 12), dtype=np.int32)
    on_cpu = unpack_bits(words, 380, torch.device("cpu"))
    assert torch.equal(unpack_on_device(torch.from_numpy(words), 380), on_cpu)
    assert on_cpu.shape == (3, 380) and bool(on_cpu[0, 0]) == bool(words[0, 0] & 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_constrained_output_and_handoff(llama_dir, dtype):
    params = sampling("json", 0.9, seed=11)
    engine = LLMEngine(llama_dir, device="cuda", dtype=dtype)
    engine.add_request("r", PROMPTS[0], params)
    expected = drain(engine)["r"].outputs[0]
    check("json", expected.text)
    prefill = LLMEngine(llama_dir, device="cuda", dtype=dtype, role="prefill")
    prefill.add_request("r", PROMPTS[0], params)
    pkg = pickle.loads(pickle.dumps(drain(prefill)["r"].kv_package))
    decode = LLMEngine(llama_dir, device="cuda", dtype=dtype, role="decode")
    decode.add_request("r", {"prompt_token_ids": pkg.prompt_token_ids}, pkg.params, kv_package=pkg)
    assert drain(decode)["r"].outputs[0].token_ids == expected.token_ids
