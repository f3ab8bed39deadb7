"""Disaggregation: a prefill-role engine packages the prompt K/V; a decode-role engine continues it
with the exact tokens of role "both" and without recomputing any prompt token."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from runtime.engine import KVPackage, LLMEngine, SamplingParams

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "héllo wörld 世界 🙂 and more words here"]


def drain(engine: LLMEngine) -> dict[str, object]:
    final = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                final[output.request_id] = output
    return final


def disaggregated(model_dir: str, params: SamplingParams, **kwargs) -> dict[str, object]:
    prefill = LLMEngine(model_dir, role="prefill", **kwargs)
    decode = LLMEngine(model_dir, role="decode", **kwargs)
    for i, prompt in enumerate(PROMPTS):
        prefill.add_request(f"r{i}", prompt, params)
    packages = {rid: out.kv_package for rid, out in drain(prefill).items()}
    assert all(isinstance(p, KVPackage) for p in packages.values())
    assert prefill.stats()["num_free_blocks"] == prefill.stats()["num_total_blocks"]
    for rid, pkg in packages.items():
        pkg = pickle.loads(pickle.dumps(pkg))  # what crossing the object store does
        decode.add_request(rid, {"prompt_token_ids": pkg.prompt_token_ids}, params, kv_package=pkg)
    out = drain(decode)
    assert decode.stats()["num_prompt_tokens_computed"] == 0
    assert decode.stats()["num_free_blocks"] == decode.stats()["num_total_blocks"]
    return out


def both(model_dir: str, params: SamplingParams, **kwargs) -> dict[str, object]:
    engine = LLMEngine(model_dir, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    return drain(engine)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=20, ignore_eos=True, logprobs=2),
], ids=["greedy", "seeded"])
def test_prefill_plus_decode_equals_both(llama_dir, params):
    expected = both(llama_dir, params)
    got = disaggregated(llama_dir, params)
    for rid, output in expected.items():
        assert got[rid].outputs[0].token_ids == output.outputs[0].token_ids
        assert got[rid].outputs[0].text == output.outputs[0].text
        if params.logprobs is not None:
            assert len(got[rid].outputs[0].logprobs) == len(got[rid].outputs[0].token_ids)


def test_package_roundtrip_with_bfloat16_and_int8_cache(llama_dir):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for kwargs in ({"dtype": "bfloat16"}, {"kv_cache_dtype": "int8"}):
        expected = both(llama_dir, params, **kwargs)
        got = disaggregated(llama_dir, params, **kwargs)
        assert {r: o.outputs[0].token_ids for r, o in got.items()} == \
               {r: o.outputs[0].token_ids for r, o in expected.items()}


def test_package_shape_dtype_and_nbytes(llama_dir):
    prefill = LLMEngine(llama_dir, role="prefill")
    prefill.add_request("r", PROMPTS[0], SamplingParams(temperature=0, max_tokens=8))
    (output,) = drain(prefill).values()
    pkg = output.kv_package
    args = prefill.runner.model.args
    assert output.finished and output.outputs[0].finish_reason is None
    assert output.outputs[0].token_ids == [pkg.first_token_id]
    assert isinstance(pkg.k, np.ndarray)
    assert pkg.k.shape == (args.num_layers, len(output.prompt_token_ids), args.num_kv_heads, args.head_dim)
    assert pkg.nbytes == pkg.k.nbytes + pkg.v.nbytes and pkg.dtype == "float32"


def test_mismatched_model_is_refused(llama_dir, tiny_model_factory):
    prefill = LLMEngine(llama_dir, role="prefill")
    prefill.add_request("r", PROMPTS[0], SamplingParams(max_tokens=8))
    pkg = next(iter(drain(prefill).values())).kv_package
    other = LLMEngine(tiny_model_factory("llama", seed=1), role="decode")
    with pytest.raises(ValueError, match="another model"):
        other.add_request("r", {"prompt_token_ids": pkg.prompt_token_ids}, pkg.params, kv_package=pkg)


def test_decode_role_prefills_plain_requests_itself(llama_dir):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    expected = both(llama_dir, params)
    decode = LLMEngine(llama_dir, role="decode")
    for i, prompt in enumerate(PROMPTS):
        decode.add_request(f"r{i}", prompt, params)
    got = drain(decode)
    assert {r: o.outputs[0].token_ids for r, o in got.items()} == {r: o.outputs[0].token_ids for r, o in expected.items()}


def test_prefill_role_finishing_on_first_token_sends_no_package(llama_dir):
    prefill = LLMEngine(llama_dir, role="prefill")
    prefill.add_request("r", PROMPTS[0], SamplingParams(max_tokens=1))
    output = next(iter(drain(prefill).values()))
    assert output.kv_package is None and output.outputs[0].finish_reason == "length"


def test_prefill_role_rejects_n_above_one(llama_dir):
    with pytest.raises(ValueError, match="SamplingParams.n"):
        LLMEngine(llama_dir, role="prefill").add_request("r", "hi", SamplingParams(n=2))
