"""One request, same tokens: alone, batched, chunked prefill, after preemption, on a prefix-cache hit.
And block accounting returns to zero after requests finish or are aborted."""

from __future__ import annotations

import pytest

from runtime.engine import LLMEngine, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "héllo wörld 世界 🙂",
    "def add(a, b):\n    return a + b\n" * 2,
]


def run(engine: LLMEngine, prompts: list[str], params: SamplingParams = GREEDY) -> dict[str, list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    tokens = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = output.outputs[0].token_ids
    assert_blocks_all_free(engine)
    return tokens


def assert_blocks_all_free(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert all(count == 0 for count in engine.block_manager.ref_counts)


@pytest.fixture(scope="module")
def alone(llama_dir) -> list[list[int]]:
    engine = LLMEngine(llama_dir, enable_prefix_caching=False)
    return [run(engine, [prompt])["r0"] for prompt in PROMPTS]


def test_batched_equals_alone(llama_dir, alone):
    tokens = run(LLMEngine(llama_dir, enable_prefix_caching=False), PROMPTS)
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == alone


def test_chunked_prefill_equals_alone(llama_dir, alone):
    engine = LLMEngine(llama_dir, max_num_batched_tokens=8, max_num_seqs=4, enable_prefix_caching=False)
    tokens = run(engine, PROMPTS)
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == alone
    assert engine.stats()["num_prompt_tokens_computed"] == sum(len(engine.tokenizer.encode(p)) for p in PROMPTS)


def test_preemption_equals_alone(llama_dir, alone):
    engine = LLMEngine(llama_dir, num_kvcache_blocks=30, block_size=4, enable_prefix_caching=False)
    tokens = run(engine, PROMPTS)
    assert engine.stats()["num_preemptions"] > 0
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == alone


def test_preemption_with_prefix_cache_equals_alone(llama_dir, alone):
    engine = LLMEngine(llama_dir, num_kvcache_blocks=30, block_size=4)
    tokens = run(engine, PROMPTS)
    assert engine.stats()["num_preemptions"] > 0
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == alone


def test_prefix_cache_hit_equals_alone(llama_dir, alone):
    engine = LLMEngine(llama_dir, block_size=4)
    first = run(engine, [PROMPTS[0]])["r0"]
    computed = engine.stats()["num_prompt_tokens_computed"]
    again = run(engine, [PROMPTS[0]])["r0"]
    num_prompt = len(engine.tokenizer.encode(PROMPTS[0]))
    assert first == again == alone[0]
    assert engine.stats()["prefix_cache_hit_rate"] > 0.4
    # the second run computed only the uncached tail of the prompt
    assert engine.stats()["num_prompt_tokens_computed"] - computed <= num_prompt % 4 + 4


def test_abort_frees_blocks_at_once(llama_dir):
    engine = LLMEngine(llama_dir)
    engine.add_request("a", PROMPTS[0], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.add_request("b", PROMPTS[1], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.add_request("c", PROMPTS[2], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.stats()["num_free_blocks"] < engine.stats()["num_total_blocks"]
    engine.abort_request("a")
    engine.abort_request("b")
    engine.abort_request("c")
    assert not engine.has_unfinished_requests()
    assert_blocks_all_free(engine)
    engine.abort_request("unknown")  # a no-op


def test_abort_of_waiting_request(llama_dir):
    engine = LLMEngine(llama_dir, max_num_seqs=1)
    engine.add_request("a", PROMPTS[0], GREEDY)
    engine.add_request("b", PROMPTS[1], GREEDY)
    engine.step()
    assert engine.stats()["num_waiting"] == 1
    engine.abort_request("b")
    run(engine, [])
