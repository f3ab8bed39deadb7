"""DeltaTracker over a real engine's outputs: delta RequestOutputs (what the Serve path asks for) give the same
stream chunks as cumulative ones, including the prefill/decode handoff that re-reports the first token."""

from __future__ import annotations

import dataclasses

import pytest
from fakes.engine_models import build_tiny_model

from runtime.engine import LLMEngine, SamplingParams
from serve_apps.llm.outputs import DeltaTracker

PROMPT = "héllo 世界, the quick brown fox"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("outputs-llama")), "llama")


@pytest.fixture(scope="module")
def engine(model_dir) -> LLMEngine:
    return LLMEngine(model_dir, max_num_seqs=8)


def outputs_of(engine: LLMEngine, request_id: str, prompt, params: SamplingParams, **kwargs) -> list:
    engine.add_request(request_id, prompt, params, **kwargs)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


def new_tracker(engine: LLMEngine, params: SamplingParams) -> DeltaTracker:
    return DeltaTracker(tokenizer=engine.tokenizer, num_logprobs=params.logprobs,
                        num_prompt_tokens=len(engine.tokenizer.encode(PROMPT)))


def streamed(tracker: DeltaTracker, outputs: list) -> dict[int, dict]:
    """What a client receives per choice: the chunks' text, token ids, logprob tokens and finish reason."""
    got: dict[int, dict] = {}
    for output in outputs:
        chunk = tracker.chunk(output)
        for part in (chunk or {}).get("outputs", []):
            choice = got.setdefault(part["index"], {"text": "", "token_ids": [], "logprob_tokens": [],
                                                    "finish_reason": None})
            choice["text"] += part["text"]
            choice["token_ids"] += part["token_ids"]
            choice["logprob_tokens"] += [entry["token"] for entry in part.get("logprobs", [])]
            choice["finish_reason"] = part["finish_reason"] or choice["finish_reason"]
    return got


@pytest.mark.parametrize("extra", [
    dict(logprobs=2),
    dict(n=3, temperature=1.0, seed=5),
    dict(stop=["never-there", " b"], logprobs=0),
])
def test_delta_outputs_stream_the_same_chunks_as_cumulative_ones(engine, extra):
    params = SamplingParams(**{"temperature": 0, "max_tokens": 40, "ignore_eos": True, **extra})
    cumulative = outputs_of(engine, "c", PROMPT, params)
    delta = outputs_of(engine, "d", PROMPT, dataclasses.replace(params, output_kind="delta"))
    expected = streamed(new_tracker(engine, params), cumulative)
    tracker = new_tracker(engine, params)
    assert streamed(tracker, delta) == expected
    assert tracker.num_output_tokens == sum(len(c["token_ids"]) for c in expected.values())
    assert all(len(o.outputs[0].token_ids) <= 1 for o in delta)  # the engine sent only new tokens


def test_pd_handoff_with_delta_outputs_does_not_repeat_the_first_token(model_dir, engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1, output_kind="delta")
    expected = streamed(new_tracker(engine, params), outputs_of(engine, "both", PROMPT, params))
    tracker = new_tracker(engine, params)
    prefill = LLMEngine(model_dir, role="prefill")
    (first,) = outputs_of(prefill, "r", PROMPT, params)
    first_chunk = streamed(tracker, [first])
    assert first_chunk[0]["token_ids"] == expected[0]["token_ids"][:1]
    pkg = first.kv_package
    decode = LLMEngine(model_dir, role="decode")
    rest = streamed(tracker, outputs_of(decode, "r", {"prompt_token_ids": pkg.prompt_token_ids}, params,
                                        kv_package=pkg))
    assert first_chunk[0]["token_ids"] + rest[0]["token_ids"] == expected[0]["token_ids"]
    assert first_chunk[0]["text"] + rest[0]["text"] == expected[0]["text"]
    assert first_chunk[0]["logprob_tokens"] + rest[0]["logprob_tokens"] == expected[0]["logprob_tokens"]
    # the KV was lost: decode continues as a fresh request on prompt + first token, after a rebase
    tracker = new_tracker(engine, params)
    streamed(tracker, [first])
    tracker.rebase()
    continuation = {"prompt_token_ids": first.prompt_token_ids + first.outputs[0].token_ids}
    rest = streamed(tracker, outputs_of(decode, "again", continuation,
                                        dataclasses.replace(params, max_tokens=params.max_tokens - 1)))
    assert first_chunk[0]["token_ids"] + rest[0]["token_ids"] == expected[0]["token_ids"]
