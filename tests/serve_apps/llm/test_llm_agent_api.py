"""What agents send, over HTTP with the official openai client, in the pd and the colocated app.

A tiny random-weight Qwen3 model served with Qwen3's real chat template. Random weights never choose
to call a tool, so every assertion here is one that constrained decoding guarantees: a required or
named tool choice, a JSON schema, a regex that writes a `<think>` block or a call in the model's format.

`agent-co` is started as vLLM users start a tool model (`--enable-auto-tool-choice --tool-call-parser
hermes --reasoning-parser qwen3`); `agent-pd` has the reasoning parser but no auto tool choice, so
required and named choices must work without any tool flag and `auto` must be refused.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import jsonschema
import openai
import pytest
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, run_apps, start_serve
from ray import serve

from runtime.engine.chat_template import render_chat_template
from runtime.engine.tokenizer import Tokenizer
from serve_apps.llm import build_openai_app, build_pd_openai_app

pytestmark = pytest.mark.ray_cluster
MODES = ["pd", "co"]
QWEN3_TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "chat_templates", "qwen3.jinja")
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 10}, "unit": {"enum": ["c", "f"]}}}
CLOCK = {"type": "object", "additionalProperties": False, "required": ["zone"],
         "properties": {"zone": {"enum": ["utc", "cet", "pst"]}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "time in a zone", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
USER = [{"role": "system", "content": "You are a helpful assistant that uses tools."},
        {"role": "user", "content": "What is the weather in Paris, and what time is it there?"}]


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    ensure_ray()
    model = build_tiny_model(str(tmp_path_factory.mktemp("agent") / "tiny-qwen3"), "qwen3",
                             max_position_embeddings=2048)
    # The model's own sampling default (vLLM applies generation_config.json to fields a request leaves unset)
    config_path = os.path.join(model, "generation_config.json")
    generation = json.load(open(config_path)) if os.path.exists(config_path) else {}
    with open(config_path, "w") as f:
        json.dump({**generation, "max_new_tokens": 7}, f)
    port = start_serve()
    common = {"model_id": "tiny", "model_source": model, "engine_kwargs": {"max_num_seqs": 8},
              "chat_template": os.path.abspath(QWEN3_TEMPLATE), "reasoning_parser": "qwen3"}
    pd_args = {"llm_configs": [{**common, "prefill_deployment_config": SMALL_REPLICA,
                                "decode_deployment_config": SMALL_REPLICA,
                                "kv_transfer_config": {"min_prompt_tokens": 16, "prefill_timeout_s": 20}}]}
    co_args = {"llm_configs": [{**common, "deployment_config": SMALL_REPLICA, "enable_auto_tool_choice": True,
                                "tool_call_parser": "hermes"}]}
    run_apps({"agent-pd": (build_pd_openai_app(pd_args), "/agent-pd"),
              "agent-co": (build_openai_app(co_args), "/agent-co")})
    base = f"http://127.0.0.1:{port}"
    yield {"pd": f"{base}/agent-pd", "co": f"{base}/agent-co", "model": model}
    serve.delete("agent-pd")
    serve.delete("agent-co")
    serve.shutdown()  # the next module starts Serve on its own port


@pytest.fixture(scope="module")
def clients(apps):
    return {mode: openai.OpenAI(base_url=apps[mode] + "/v1", api_key="unused", max_retries=0) for mode in MODES}


@pytest.fixture(scope="module")
def tokenizer(apps):
    return Tokenizer(apps["model"])


def _assert_valid_calls(calls, allowed: set[str]) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _streamed_calls(stream) -> tuple[dict[int, dict], str | None]:
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] = (delta.function.name if delta.function else None) or call["name"]
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return calls, finish


@pytest.mark.parametrize("mode", MODES)
def test_named_tool_choice_returns_a_call_valid_against_the_schema(mode, clients):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in (1, 2):
        response = clients[mode].chat.completions.create(
            model="tiny", messages=USER, tools=TOOLS, tool_choice=named, max_tokens=200, temperature=1.0, seed=seed)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        _assert_valid_calls(choice.message.tool_calls, {"get_weather"})
    stream = clients[mode].chat.completions.create(
        model="tiny", messages=USER, tools=TOOLS, tool_choice=named, max_tokens=200, temperature=1.0, seed=1,
        stream=True)
    calls, finish = _streamed_calls(stream)
    assert finish == "tool_calls" and calls
    for call in calls.values():
        assert call["id"] and call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER)  # fragments concatenate to valid JSON
    # same seed, same calls, streamed or not
    assert [c["arguments"] for c in calls.values()] == [
        c.function.arguments for c in clients[mode].chat.completions.create(
            model="tiny", messages=USER, tools=TOOLS, tool_choice=named, max_tokens=200, temperature=1.0,
            seed=1).choices[0].message.tool_calls]


@pytest.mark.parametrize("mode", MODES)
def test_required_tool_choice_without_parallel_calls_returns_one_call(mode, clients):
    for seed in (3, 4):
        response = clients[mode].chat.completions.create(
            model="tiny", messages=USER, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
            max_tokens=200, temperature=1.0, seed=seed)
        calls = response.choices[0].message.tool_calls
        assert len(calls) == 1 and response.choices[0].finish_reason == "tool_calls"
        _assert_valid_calls(calls, {"get_weather", "get_time"})


@pytest.mark.parametrize("mode", MODES)
def test_json_schema_and_json_object_outputs_parse_and_validate(mode, clients):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "count"], "properties": {
        "name": {"type": "string", "maxLength": 8}, "count": {"type": "integer", "minimum": 0, "maximum": 99}}}
    response = clients[mode].chat.completions.create(
        model="tiny", messages=USER, max_tokens=120, temperature=1.0, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)
    response = clients[mode].chat.completions.create(
        model="tiny", messages=USER, max_tokens=300, temperature=0.7, seed=6, response_format={"type": "json_object"},
        extra_body={"structured_outputs": None})
    if response.choices[0].finish_reason == "stop":  # json_object has no length bound; a cut one is not checked
        assert isinstance(json.loads(response.choices[0].message.content), dict)


@pytest.mark.parametrize("mode", MODES)
def test_logit_bias_and_allowed_token_ids_force_a_token(mode, clients, tokenizer):
    token = tokenizer.encode("robot", add_special_tokens=False)[0]
    forced = tokenizer.decode([token] * 4)
    biased = clients[mode].chat.completions.create(
        model="tiny", messages=USER, max_tokens=4, temperature=1.0, seed=7, logit_bias={str(token): 100})
    assert biased.choices[0].message.content == forced
    allowed = clients[mode].chat.completions.create(
        model="tiny", messages=USER, max_tokens=4, temperature=1.0, seed=7, extra_body={"allowed_token_ids": [token]})
    assert allowed.choices[0].message.content == forced


@pytest.mark.parametrize("mode", MODES)
def test_extra_sampling_fields_change_the_output_as_they_should(mode, clients):
    client = clients[mode]

    def text(**kwargs):
        return client.completions.create(model="tiny", prompt=USER[1]["content"] * 2, max_tokens=16,
                                         **kwargs).choices[0].text

    greedy = text(temperature=0, extra_body={"ignore_eos": True})
    assert text(temperature=1.5, seed=8, extra_body={"top_k": 1, "ignore_eos": True}) == greedy
    assert text(temperature=1.5, seed=8, extra_body={"min_p": 1.0, "ignore_eos": True}) == greedy
    assert text(temperature=1.5, seed=8, extra_body={"ignore_eos": True}) != greedy
    stop = greedy[6:9]
    assert stop and stop not in greedy[:6]
    cut = greedy[:greedy.index(stop)]
    assert text(temperature=0, stop=[stop], extra_body={"ignore_eos": True}) == cut
    assert text(temperature=0, stop=[stop], extra_body={"ignore_eos": True,
                                                        "include_stop_str_in_output": True}) == cut + stop


@pytest.mark.parametrize("mode", MODES)
def test_generation_config_defaults_apply_only_to_unset_fields(mode, clients):
    def usage(**kwargs):
        return clients[mode].chat.completions.create(model="tiny", messages=USER, temperature=0,
                                                     extra_body={"ignore_eos": True}, **kwargs).usage
    assert usage().completion_tokens == 7  # the model's generation_config.json max_new_tokens
    assert usage(max_tokens=9).completion_tokens == 9  # a field the request sets wins


@pytest.mark.parametrize("mode", MODES)
def test_cached_tokens_count_a_repeated_prefix(mode, clients):
    messages = [{"role": "system", "content": f"{mode}: a long shared system prompt about robots. " * 6},
                {"role": "user", "content": "hello"}]
    usages = [clients[mode].chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                                    temperature=0).usage for _ in range(2)]
    assert usages[1].prompt_tokens_details.cached_tokens > 0
    assert usages[1].prompt_tokens_details.cached_tokens <= usages[1].prompt_tokens


def test_a_multi_turn_tool_conversation_renders_the_calls_into_the_prompt(apps, tokenizer):
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21 C"},
    ]
    response = httpx.post(apps["co"] + "/tokenize", json={"model": "tiny", "messages": messages, "tools": TOOLS},
                          timeout=60)
    assert response.status_code == 200, response.text
    prompt = tokenizer.decode(response.json()["tokens"], skip_special_tokens=False)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert '"name": "get_time"' in prompt  # the tools are in the system turn
    with open(QWEN3_TEMPLATE) as f:
        expected = render_chat_template(f.read(), [
            *USER, {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21 C"}],
            tools=TOOLS, add_generation_prompt=True, special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert prompt == expected


@pytest.mark.parametrize("mode", MODES)
def test_unknown_fields_and_unserved_options_are_a_400_naming_them(mode, clients):
    with pytest.raises(openai.BadRequestError, match="frobnicate"):
        clients[mode].chat.completions.create(model="tiny", messages=USER, max_tokens=2, extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError, match="suffix"):
        clients[mode].completions.create(model="tiny", prompt="hi", max_tokens=2, suffix="end")
    if mode == "pd":  # started without --enable-auto-tool-choice
        with pytest.raises(openai.BadRequestError, match="enable-auto-tool-choice"):
            clients[mode].chat.completions.create(model="tiny", messages=USER, tools=TOOLS, max_tokens=2)


def test_auto_tool_choice_parses_a_call_in_the_model_format(clients):
    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "cet"}}\n</tool_call>'
    response = clients["co"].chat.completions.create(
        model="tiny", messages=USER, tools=TOOLS, max_tokens=100, temperature=1.0, seed=9,
        extra_body={"structured_outputs": {"regex": "[a-z]{1,4}\\n" + re.escape(call)}})
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_time", {"zone": "cet"})]
    assert re.fullmatch("[a-z]{1,4}", message.content)  # the text before the call (its newline dropped)


@pytest.mark.parametrize("mode", MODES)
def test_reasoning_is_split_out_counted_and_streamed(mode, clients):
    kwargs = dict(model="tiny", messages=USER, max_tokens=60, temperature=1.0, seed=10,
                  extra_body={"structured_outputs": {"regex": "<think>[a-z]{2,6} [a-z]{2,6}</think>[a-z]{1,6}"}})
    response = clients[mode].chat.completions.create(**kwargs)
    message = response.choices[0].message
    assert re.fullmatch("[a-z]{2,6} [a-z]{2,6}", message.reasoning_content), message
    assert re.fullmatch("[a-z]{1,6}", message.content), message
    assert 0 < response.usage.completion_tokens_details.reasoning_tokens < response.usage.completion_tokens
    reasoning, content = "", ""
    for chunk in clients[mode].chat.completions.create(**kwargs, stream=True):
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            content += chunk.choices[0].delta.content or ""
    assert (reasoning, content) == (message.reasoning_content, message.content)


@pytest.mark.parametrize("mode", MODES)
def test_the_readme_agent_example_runs_as_written(mode, apps, capsys):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")).read()
    code = re.search(r"```python\n(.*?)```", readme.split("## Model API for agents", 1)[1], re.S).group(1)
    code = code.replace("http://127.0.0.1:8000/v1", apps[mode] + "/v1").replace('"strata-lm"', '"tiny"')
    # A random-weight model spends many byte-level tokens on each character: more room, and a fixed seed.
    assert code.count("max_tokens=100") == 2
    code = code.replace("max_tokens=100", "max_tokens=400, seed=11")
    exec(compile(code, "README.md", "exec"), {})
    call_line, person_line = capsys.readouterr().out.strip().splitlines()
    assert call_line.startswith("get_weather {'city': ")
    assert person_line.startswith("{'name': ")
