"""Every family against transformers: prefill logits within a tight tolerance, greedy tokens identical."""

from __future__ import annotations

import pytest
import torch
import transformers

from runtime.engine import LLM, SamplingParams
from runtime.engine.testing import FAMILIES

PROMPT = "The quick brown fox jumps over the lazy dog. héllo 世界"


def engine_prefill_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Last-position logits from the engine's own forward (one prefill step, sampling bypassed)."""
    from runtime.engine.sequence import Request

    engine = llm.llm_engine
    seq = Request("logits", None, ids, SamplingParams(), 0, None).seqs[0]
    assert engine.block_manager.allocate(seq, [], len(ids))
    logits, sampled = engine.runner.execute([seq], [len(ids)])
    engine.block_manager.free(seq)
    assert sampled == [seq]
    return logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers(tiny_model_factory, family):
    model_dir = tiny_model_factory(family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    llm = LLM(model_dir, dtype="float32")
    ids = llm.get_tokenizer().encode(PROMPT)
    with torch.no_grad():
        reference = hf(torch.tensor([ids])).logits[0, -1]
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=40, min_new_tokens=40, do_sample=False)
    torch.testing.assert_close(engine_prefill_logits(llm, ids), reference, atol=1e-4, rtol=1e-4)
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert out[0].outputs[0].token_ids == expected[0, len(ids):].tolist()


def test_sharded_checkpoint_with_index_loads_the_same_weights(tiny_model_factory):
    single = LLM(tiny_model_factory("llama"))
    sharded_dir = tiny_model_factory("llama", max_shard_size="100KB")
    import os

    assert os.path.isfile(os.path.join(sharded_dir, "model.safetensors.index.json"))
    sharded = LLM(sharded_dir)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    assert (single.generate("Hello", params)[0].outputs[0].token_ids
            == sharded.generate("Hello", params)[0].outputs[0].token_ids)


def test_bfloat16_on_cpu_tracks_float32(tiny_model_factory):
    model_dir = tiny_model_factory("llama")
    ids = LLM(model_dir).get_tokenizer().encode(PROMPT)
    full = engine_prefill_logits(LLM(model_dir, dtype="float32"), ids)
    half = engine_prefill_logits(LLM(model_dir, dtype="bfloat16"), ids)
    assert half.dtype == torch.float32  # logits are always returned in fp32
    assert torch.nn.functional.cosine_similarity(full, half, dim=0) > 0.99
