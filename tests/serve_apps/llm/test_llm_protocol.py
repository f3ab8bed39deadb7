"""OpenAI bodies: ranges and types are rejected with the field named; mapping to SamplingParams fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.llm.config import LLMServingArgs
from serve_apps.llm.openai_format import Aggregate, ResponseShape, StreamFormatter
from serve_apps.llm.protocol import (
    ACCEPTED_WITHOUT_EFFECT,
    ChatCompletionRequest,
    CompletionRequest,
    to_generate_request,
)


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
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "b"
    formatter = StreamFormatter(ResponseShape(chat=False, response_id="cmpl-1", model="m"), include_usage=True)
    events = formatter.events(_chunk("a", [1])) + formatter.events(_chunk("b", [2], "length"))
    events += formatter.final_events()
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n" and '"completion_tokens":2' in events[-2]


def _chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("body", [
    {"model": "m", "prompt": "hi", "suffix": "x"},
    {"model": "m", "prompt": "hi", "best_of": 2},
])
def test_unknown_completion_fields_are_rejected_by_name(body):
    with pytest.raises(ValidationError, match="suffix|best_of"):
        CompletionRequest.model_validate(body)


def _accept_chat(body: ChatCompletionRequest) -> dict:
    return {"ok": True}


def test_unknown_fields_get_a_400_that_names_all_of_them():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve_apps.llm.errors import install_error_handlers

    app = FastAPI()  # the ingress's own app needs a Serve replica; same handlers, same body model
    install_error_handlers(app)
    app.post("/v1/chat/completions")(_accept_chat)
    response = TestClient(app).post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1, "modalities": ["audio"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "frobnicate" in error["message"] and "modalities" in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] in ("frobnicate", "modalities")


def test_only_documented_fields_are_accepted_without_effect():
    assert set(ACCEPTED_WITHOUT_EFFECT) == {"user"}
    assert to_generate_request("r", _chat(user="u-1")).sampling == to_generate_request("r", _chat()).sampling


def test_vllm_extra_sampling_fields_reach_the_engine_and_unset_ones_stay_unset():
    request = to_generate_request("r", _chat(top_k=5, min_p=0.1, repetition_penalty=1.2, stop_token_ids=[3],
                                             ignore_eos=True, include_stop_str_in_output=True,
                                             skip_special_tokens=False, logit_bias={"7": 50}))
    sampling = request.sampling
    assert (sampling["top_k"], sampling["min_p"], sampling["repetition_penalty"]) == (5, 0.1, 1.2)
    assert sampling["stop_token_ids"] == [3] and sampling["logit_bias"] == {"7": 50}
    assert sampling["ignore_eos"] and sampling["include_stop_str_in_output"] and not sampling["skip_special_tokens"]
    unset = to_generate_request("r", _chat()).sampling
    assert not {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens"} & set(unset)
    with pytest.raises(ValidationError, match="logit_bias"):
        _chat(logit_bias={"7": 101})
    with pytest.raises(ValidationError, match="logit_bias"):
        _chat(logit_bias={"seven": 1})


def test_response_format_maps_to_structured_outputs():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = to_generate_request("r", _chat(response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}))
    assert request.sampling["structured_outputs"] == {"json": schema}
    assert to_generate_request("r", _chat(response_format={"type": "json_object"})).sampling[
        "structured_outputs"] == {"json_object": True}
    assert "structured_outputs" not in to_generate_request("r", _chat(response_format={"type": "text"})).sampling
    with pytest.raises(ValidationError, match="json_schema"):
        _chat(response_format={"type": "json_schema"})
    with pytest.raises(ValidationError, match="unknown key"):
        _chat(structured_outputs={"jsonn": {}})


def test_tool_choice_is_checked_against_tools():
    assert to_generate_request("r", _chat(tools=[TOOL])).tool_choice == "auto"
    assert to_generate_request("r", _chat()).tool_choice == "none"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert to_generate_request("r", _chat(tools=[TOOL], tool_choice=named)).tool_choice == named
    with pytest.raises(ValidationError, match="not among tools"):
        _chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValidationError, match="needs tools"):
        _chat(tool_choice="required")
    with pytest.raises(ValidationError, match="cannot both"):
        _chat(tools=[TOOL], tool_choice="required", response_format={"type": "json_object"})
    with pytest.raises(ValidationError, match="unique"):
        _chat(tools=[TOOL, TOOL])


def test_tool_conversation_is_normalised_for_templates():
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"},
    ]
    request = to_generate_request("r", ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, "tools": [TOOL], "chat_template_kwargs": {"enable_thinking": False},
         "reasoning_effort": "low"}))
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert tool == {"role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "call_1"}
    assert request.chat_template_kwargs == {"enable_thinking": False, "reasoning_effort": "low"}
    bad = [messages[0], {**messages[1], "tool_calls": [{**messages[1]["tool_calls"][0],
                                                          "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(ValueError, match="arguments must be a JSON object"):
        to_generate_request("r", ChatCompletionRequest.model_validate({"model": "m", "messages": bad}))
    with pytest.raises(ValidationError, match="tool_call_id"):
        _chat(messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(ValidationError, match="refusal"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{**messages[1], "refusal": "no"}]})
