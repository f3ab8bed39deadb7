"""OpenAI bodies: ranges and types are rejected with the field named; mapping to SamplingParams fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.llm.config import LLMServingArgs
from serve_apps.llm.openai_format import Aggregate, ResponseShape, StreamFormatter
from serve_apps.llm.protocol import ChatCompletionRequest, CompletionRequest, to_generate_request


@pytest.mark.parametrize(
    "field, value",
    [("temperature", 3.0), ("top_p", 0.0), ("n", 0), ("max_tokens", 0), ("logprobs", 21), ("seed", -1),
     ("stop", ["a", "b", "c", "d", "e"]), ("presence_penalty", 2.5), ("temperature", "hot")],
)
def test_completion_ranges_rejected(field, value):
    with pytest.raises(ValidationError, match=field):
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", field: value})


def test_chat_maps_max_completion_tokens_and_logprobs():
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7,
         "logprobs": True, "top_logprobs": 3, "seed": 5, "stop": "x", "user": "ignored"}
    )
    request = to_generate_request("r1", body)
    assert request.sampling["max_tokens"] == 7 and request.sampling["seed"] == 5
    assert request.sampling["stop"] == ["x"] and request.num_logprobs == 3
    assert request.messages == [{"role": "user", "content": "hi"}]


def test_top_logprobs_without_logprobs_is_a_user_error():
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}
    )
    with pytest.raises(ValueError, match="top_logprobs"):
        to_generate_request("r1", body)


def test_single_prompt_list_unwrapped_and_batches_rejected():
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["hi"]}).prompt == "hi"
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]}).prompt == [1, 2, 3]
    with pytest.raises(ValidationError, match="one prompt"):
        CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": []})


def test_serving_args_validate_fields():
    with pytest.raises(ValidationError, match="unique"):
        LLMServingArgs.model_validate({"llm_configs": [{"model_source": "/a/m"}, {"model_source": "/b/m"}]})
    with pytest.raises(ValidationError, match="decode_deployment_config"):
        LLMServingArgs.model_validate({"llm_configs": [{"model_source": "/a", "decode_deployment_config": {"x": 1}}]})
    args = LLMServingArgs.model_validate({"llm_configs": [{"model_source": "/models/tiny-llama/"}]})
    assert args.llm_configs[0].model_id == "tiny-llama"


def _chunk(text, ids, finish=None, logprobs=None):
    out = {"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}
    if logprobs is not None:
        out["logprobs"] = logprobs
    return {"prompt_tokens": 5, "outputs": [out]}


def test_aggregate_and_stream_formats():
    entry = {"token": "a", "logprob": -0.1, "top": [["a", -0.1], ["b", -2.0]]}
    shape = ResponseShape(chat=True, response_id="chatcmpl-1", model="m", want_logprobs=True)
    aggregate = Aggregate(shape)
    aggregate.add(_chunk("a", [1], logprobs=[entry]))
    aggregate.add(_chunk("b", [2], "stop", logprobs=[entry]))
    body = aggregate.response()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "b"
    formatter = StreamFormatter(ResponseShape(chat=False, response_id="cmpl-1", model="m"), include_usage=True)
    events = formatter.events(_chunk("a", [1])) + formatter.events(_chunk("b", [2], "length"))
    events += formatter.final_events()
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n" and '"completion_tokens":2' in events[-2]
