"""Output kinds (vLLM's RequestOutputKind): delta outputs carry only what is new since the previous output,
so a streamed request costs O(new tokens) per step; stitched together they equal the cumulative output."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.engine import LLM, LLMEngine, SamplingParams
from runtime.engine.sampling_params import RequestOutputKind
from runtime.engine.structured_outputs import StructuredOutputsParams

PROMPT = "héllo 世界, the quick brown fox"


@dataclasses.dataclass
class Stitched:
    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    logprobs: list = dataclasses.field(default_factory=list)
    finish_reason: str | None = None


def run(engine: LLMEngine, request_id: str, prompt, params: SamplingParams, **kwargs) -> list:
    engine.add_request(request_id, prompt, params, **kwargs)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


def stitch(outputs: list, tokens_per_step: int | None = 1) -> dict[int, Stitched]:
    """Concatenate delta outputs, checking each carries exactly the part after what came before."""
    got: dict[int, Stitched] = {}
    for output in outputs:
        for completion in output.outputs:
            s = got.setdefault(completion.index, Stitched())
            assert completion.token_offset == len(s.token_ids), "a delta starts where the previous one ended"
            assert completion.text_offset == len(s.text)
            assert completion.delta_token_ids == completion.token_ids and completion.delta_text == completion.text
            if tokens_per_step is not None:
                assert len(completion.token_ids) <= tokens_per_step, "a delta carries only the new tokens"
            s.token_ids += completion.token_ids
            s.text += completion.text
            if completion.logprobs is not None:
                assert len(completion.logprobs) == len(completion.token_ids)
                s.logprobs += completion.logprobs
            s.finish_reason = completion.finish_reason
    return got


def assert_same(got: dict[int, Stitched], expected: dict[int, Stitched]) -> None:
    """Equal tokens, text and finish reasons; logprobs equal up to float noise (prefix-cache hits and batch
    shapes change the reduction order)."""
    assert got.keys() == expected.keys()
    for index, want in expected.items():
        have = got[index]
        assert (have.token_ids, have.text, have.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        assert [list(e) for e in have.logprobs] == [list(e) for e in want.logprobs]
        assert [v for e in have.logprobs for v in e.values()] == pytest.approx(
            [v for e in want.logprobs for v in e.values()], abs=1e-4)


def as_stitched(output) -> dict[int, Stitched]:
    return {c.index: Stitched(list(c.token_ids), c.text, list(c.logprobs or []), c.finish_reason)
            for c in output.outputs}


@pytest.fixture(scope="module")
def engine(llama_dir) -> LLMEngine:
    return LLMEngine(llama_dir, max_num_seqs=8)


def test_delta_outputs_carry_only_new_tokens_and_stitch_to_the_cumulative_output(engine):
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, logprobs=2)
    cumulative = run(engine, "c", PROMPT, params)
    delta = run(engine, "d", PROMPT, dataclasses.replace(params, output_kind=RequestOutputKind.DELTA))
    assert len(delta) == len(cumulative) == 60  # one output per decode step
    assert_same(stitch(delta), as_stitched(cumulative[-1]))
    assert all(len(o.outputs[0].token_ids) == 1 for o in delta)
    # the per-output work is the delta: no output repeats text or tokens another one carried
    assert sum(len(o.outputs[0].text) for o in delta) == len(cumulative[-1].outputs[0].text)
    assert delta[-1].metrics["num_generation_tokens"] == 60 and delta[-1].finished


def test_output_kind_names_and_bad_values():
    assert SamplingParams(output_kind="delta").output_kind is RequestOutputKind.DELTA
    assert SamplingParams().output_kind is RequestOutputKind.CUMULATIVE
    with pytest.raises(ValueError, match="output_kind"):
        SamplingParams(output_kind="deltas")


def test_delta_stop_string_truncation_never_streams_past_the_stop(engine):
    base = run(engine, "base", "Hello", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[-1]
    text = base.outputs[0].text
    stop = text[5:8]
    assert stop and stop not in text[:5]
    for include in (False, True):
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop, "never-there"],
                                include_stop_str_in_output=include)
        cumulative = run(engine, f"c{include}", "Hello", params)[-1]
        delta = run(engine, f"d{include}", "Hello", dataclasses.replace(params, output_kind="delta"))
        assert_same(stitch(delta), as_stitched(cumulative))
        got = stitch(delta)[0]
        assert got.finish_reason == "stop"
        assert got.text == text[:text.index(stop) + (len(stop) if include else 0)]


def test_delta_n_above_one_stitches_each_choice(engine):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True, logprobs=1)
    cumulative = run(engine, "cn", PROMPT, params)[-1]
    delta = run(engine, "dn", PROMPT, dataclasses.replace(params, output_kind="delta"))
    got = stitch(delta)
    assert_same(got, as_stitched(cumulative))
    assert len({tuple(s.token_ids) for s in got.values()}) > 1


def test_delta_text_holds_back_multibyte_characters_split_across_steps(engine):
    target = "世界🙂é東京🚀ñ"
    # the grammar spells `target`; the tiny byte-level BPE has tokens for parts of these characters' bytes
    params = SamplingParams(temperature=0, max_tokens=len(target.encode()), output_kind="delta",
                            structured_outputs=StructuredOutputsParams(regex=target))
    delta = run(engine, "mb", PROMPT, params)
    got = stitch(delta)[0]
    assert got.text == target and got.finish_reason == "stop"
    assert "\ufffd" not in "".join(o.outputs[0].text for o in delta)
    assert any(o.outputs[0].token_ids and not o.outputs[0].text for o in delta)  # a partial character waited


def test_final_only_emits_one_full_output(engine):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    cumulative = run(engine, "cf", PROMPT, params)[-1]
    final = run(engine, "f", PROMPT, dataclasses.replace(params, output_kind="final_only"))
    assert len(final) == 1 and final[0].finished
    assert_same(as_stitched(final[0]), as_stitched(cumulative))


def test_offline_generate_returns_full_outputs_whatever_the_output_kind(llama_dir):
    llm = LLM(llama_dir)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    delta_params = dataclasses.replace(params, output_kind="delta")
    full, from_delta = llm.generate([PROMPT, PROMPT], [params, delta_params])
    assert_same(as_stitched(from_delta), as_stitched(full))
    assert len(full.outputs[0].token_ids) == 10
    assert delta_params.output_kind is RequestOutputKind.DELTA  # the caller's params are left alone


def test_delta_decode_from_a_package_starts_with_the_first_token(llama_dir, engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1, output_kind="delta")
    expected = stitch(run(engine, "both", PROMPT, params))[0]
    prefill = LLMEngine(llama_dir, role="prefill")
    (first,) = run(prefill, "r", PROMPT, params)
    assert first.outputs[0].token_ids == expected.token_ids[:1] and first.kv_package is not None
    pkg = first.kv_package
    decode = LLMEngine(llama_dir, role="decode")
    outputs = run(decode, "r", {"prompt_token_ids": pkg.prompt_token_ids}, params, kv_package=pkg)
    # the decode engine reports the package's first token again, at offset 0 (the server skips what it sent)
    assert outputs[0].outputs[0].token_offset == 0 and outputs[0].outputs[0].token_ids[0] == pkg.first_token_id
    assert_same(stitch(outputs, tokens_per_step=2), {0: expected})
