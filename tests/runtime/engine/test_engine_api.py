"""The vLLM-shaped API: generate() inputs, streaming outputs, stops, n > 1, seeds, logprobs."""

from __future__ import annotations

import pytest
from helpers.tolerances import reduction_tolerance

from runtime.engine import LLM, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_dir) -> LLM:
    return LLM(llama_dir, max_num_seqs=8)


def greedy(max_tokens=16, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_generate_accepts_strings_token_ids_and_per_prompt_params(llm):
    tokenizer = llm.get_tokenizer()
    ids = tokenizer.encode("Hello there")
    outs = llm.generate(["Hello there", {"prompt_token_ids": ids}], [greedy(8), greedy(4)])
    assert [o.prompt_token_ids for o in outs] == [ids, ids]
    assert outs[0].prompt == "Hello there"
    assert outs[0].outputs[0].token_ids[:4] == outs[1].outputs[0].token_ids
    assert [len(o.outputs[0].token_ids) for o in outs] == [8, 4]
    assert [o.outputs[0].finish_reason for o in outs] == ["length", "length"]
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [greedy()])


def test_detokenizer_never_emits_partial_characters(llama_dir):
    from runtime.engine.tokenizer import Tokenizer, detokenize_incrementally

    tokenizer = Tokenizer(llama_dir)
    text = "héllo 東京 🙂🚀 São Paulo"
    prompt = tokenizer.encode("Hi")
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # byte-level: several tokens per character
    all_ids, prefix, read, out = list(prompt), max(len(prompt) - 5, 0), len(prompt), []
    for token in ids:
        all_ids.append(token)
        delta, prefix, read = detokenize_incrementally(tokenizer, all_ids, prefix, read, True)
        assert "\ufffd" not in delta
        out.append(delta)
    assert "".join(out) == text


def test_stream_concatenation_equals_final_text(llama_dir):
    engine = LLMEngine(llama_dir)
    engine.add_request("r", "héllo 世界", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    deltas, delta_ids, final = [], [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.outputs[0].delta_text)
            delta_ids.extend(out.outputs[0].delta_token_ids)
            final = out
    assert "".join(deltas) == final.outputs[0].text
    assert delta_ids == final.outputs[0].token_ids
    assert final.metrics["num_prompt_tokens"] == len(final.prompt_token_ids)
    assert final.metrics["num_generation_tokens"] == 30
    assert final.metrics["first_token_time"] <= final.metrics["finished_time"]


def test_stop_string_is_cut_and_not_streamed(llm):
    base = llm.generate("Hello", greedy(24))[0].outputs[0]
    stop = base.text[5:8]
    assert stop and stop not in base.text[:5]
    engine = llm.llm_engine
    engine.add_request("s", "Hello", greedy(24, stop=[stop, "never-there"]))
    streamed = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            streamed += out.outputs[0].delta_text
            final = out.outputs[0]
    assert final.finish_reason == "stop"
    assert final.text == base.text[:base.text.index(stop)] == streamed


def test_include_stop_str_in_output_keeps_the_stop_string(llm):
    base = llm.generate("Hello", greedy(24))[0].outputs[0]
    stop = base.text[5:8]
    out = llm.generate("Hello", greedy(24, stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == base.text[:base.text.index(stop) + len(stop)]


def test_stop_token_ids_end_without_the_token(llm):
    base = llm.generate("Hello", greedy(16))[0].outputs[0].token_ids
    stop_at = base[6]
    first = base.index(stop_at)
    out = llm.generate("Hello", greedy(16, stop_token_ids=[stop_at]))[0].outputs[0]
    assert out.token_ids == base[:first] and out.finish_reason == "stop"


def test_eos_stops_unless_ignored(llama_dir):
    llm = LLM(llama_dir)
    tokenizer = llm.get_tokenizer()
    base = llm.generate("Hello", greedy(12))[0].outputs[0].token_ids
    tokenizer.eos_token_ids = tokenizer.eos_token_ids | {base[3]}  # pretend this token is an EOS
    stopped = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=12))[0].outputs[0]
    assert stopped.token_ids == base[:base.index(base[3])] and stopped.finish_reason == "stop"
    assert llm.generate("Hello", greedy(12))[0].outputs[0].token_ids == base


def test_n_samples_share_prompt_blocks(llama_dir):
    engine = LLMEngine(llama_dir, block_size=4)
    prompt = "The quick brown fox jumps over the lazy dog."
    num_prompt = len(engine.tokenizer.encode(prompt))
    engine.add_request("r", prompt, SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True))
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 10 for c in final.outputs)
    assert len({tuple(c.token_ids) for c in final.outputs}) > 1
    # the prompt ran once; children recomputed only the partial last block
    assert engine.stats()["num_prompt_tokens_computed"] <= num_prompt + 2 * (num_prompt % 4)
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


def test_seed_gives_same_tokens_regardless_of_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate("Hello", seeded)[0].outputs[0].token_ids
    noisy = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(["Other", "Hello", "Third one"], [noisy, seeded, noisy])
    assert batch[1].outputs[0].token_ids == alone


def test_logprobs_hold_chosen_token_and_top_alternatives(llm):
    out = llm.generate("Hello", greedy(5, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 5
    for token, entry in zip(out.token_ids, out.logprobs):
        assert token in entry and 3 <= len(entry) <= 4
        assert entry[token] == max(entry.values())  # greedy picks the most likely token
    chosen = [e[t] for t, e in zip(out.token_ids, out.logprobs)]
    # a sum of 5 Python floats: float64 rounding at the scale of its partial sums (<= sum of |terms|)
    tol = reduction_tolerance(len(chosen), sum(abs(lp) for lp in chosen), float)
    assert out.cumulative_logprob == pytest.approx(sum(chosen), abs=tol)


def test_bad_inputs_raise_value_error_naming_the_field(llm):
    engine = llm.llm_engine
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("long", {"prompt_token_ids": [5] * engine.max_model_len}, greedy())
    with pytest.raises(ValueError, match="prompt_token_ids"):
        engine.add_request("oov", {"prompt_token_ids": [engine.vocab_size]}, greedy())
    with pytest.raises(ValueError, match="at least one token"):
        engine.add_request("empty", {"prompt_token_ids": []}, greedy())
    engine.add_request("dup", "x", greedy(1))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", "x", greedy(1))
    engine.abort_request("dup")


def test_chat_template_is_rendered_with_jinja(llm):
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<s><|user|>hi</s><|assistant|>"
    assert tokenizer.eos_token_ids == {2}
    assert llm.chat([{"role": "user", "content": "hi"}], greedy(4)).outputs[0].token_ids
