"""Chat templates: the real Qwen3, Llama 3.1, Mistral Nemo and gpt-oss templates render here exactly as in
transformers' apply_chat_template, over conversations with tools, tool calls, tool results, documents and
template kwargs; template refusals become ChatTemplateError with the template's own message."""

from __future__ import annotations

import json
import os

import jinja2
import pytest
from transformers import PreTrainedTokenizerFast

from runtime.engine.chat_template import ChatTemplateError, render_chat_template
from runtime.engine.testing import train_tokenizer
from runtime.engine.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "chat_templates")

# Each model's named special tokens, as its tokenizer_config.json gives them.
SPECIAL_TOKENS = {
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "llama3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral-nemo": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gpt-oss": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"},
}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Zürich"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the manual.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1}}, "required": ["query"]}}},
]
DOCUMENTS = [{"title": "Paris", "text": "Paris is the capital of France."},
             {"title": "Weather", "text": "Forecasts <b>may</b> change & \"often\" do."}]
CALL_ID = "call00001"  # nine alphanumerics, as Mistral's template insists


def tool_call(name: str, arguments: dict, call_id: str = CALL_ID) -> dict:
    # Arguments as a dict: the server parses OpenAI's JSON string before rendering (Llama's template needs it).
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM_USER = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "What is the weather in Zürich?"}]
TOOL_ROUND = SYSTEM_USER + [
    {"role": "assistant", "content": "", "tool_calls": [tool_call("get_weather", {"city": "Zürich"})]},
    {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": '{"temperature": 21, "sky": "clear"}'},
]
FOLLOW_UP = TOOL_ROUND + [{"role": "assistant", "content": "21 °C and clear."},
                          {"role": "user", "content": "And tomorrow?"}]

CASES = {
    "system_user": dict(messages=SYSTEM_USER),
    "tools": dict(messages=SYSTEM_USER, tools=TOOLS),
    "tool_round": dict(messages=TOOL_ROUND, tools=TOOLS),
    "follow_up_with_documents": dict(messages=FOLLOW_UP, tools=TOOLS, documents=DOCUMENTS),
}


def load_template(name: str) -> str:
    with open(os.path.join(FIXTURES, f"{name}.jinja")) as f:
        return f.read()


def transformers_render(template: str, messages: list[dict], special_tokens: dict, **kwargs) -> str:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), **special_tokens)
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def assert_same_as_transformers(name: str, messages: list[dict], **kwargs) -> str:
    template, special_tokens = load_template(name), SPECIAL_TOKENS[name]
    kwargs = {"add_generation_prompt": True, **kwargs}  # transformers' default is False, ours True
    ours = render_chat_template(template, messages, special_tokens=special_tokens, **kwargs)
    assert ours == transformers_render(template, messages, special_tokens, **kwargs)
    return ours


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(SPECIAL_TOKENS))
def test_real_templates_match_transformers(name, case, add_generation_prompt):
    text = assert_same_as_transformers(name, add_generation_prompt=add_generation_prompt, **CASES[case])
    if "tools" in CASES[case]:
        assert "get_weather" in text and "search_docs" in text
    if case in ("tool_round", "follow_up_with_documents"):
        assert "Zürich" in text and "temperature" in text  # the call's arguments and the tool's result


def test_qwen3_enable_thinking_and_reasoning_history():
    messages = FOLLOW_UP[:-2] + [{"role": "assistant", "content": "21 °C.", "reasoning_content": "Read the tool."},
                                 {"role": "user", "content": "Thanks"}]
    thinking = assert_same_as_transformers("qwen3", messages, tools=TOOLS)
    not_thinking = assert_same_as_transformers("qwen3", messages, tools=TOOLS, enable_thinking=False)
    assert not_thinking == thinking + "<think>\n\n</think>\n\n"
    assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>" in thinking
    assert "<tool_response>" in thinking


def test_gpt_oss_reasoning_effort_and_reasoning_content_alias():
    messages = SYSTEM_USER + [
        {"role": "assistant", "reasoning_content": "Need the weather tool.",
         "tool_calls": [tool_call("get_weather", {"city": "Zürich"})]},
        TOOL_ROUND[-1]]
    text = assert_same_as_transformers("gpt-oss", messages, tools=TOOLS, reasoning_effort="high")
    assert "Reasoning: high" in text
    # gpt-oss reads `thinking`; an OpenAI-style `reasoning_content` reaches it under that name too.
    assert "<|channel|>analysis<|message|>Need the weather tool.<|end|>" in text
    assert 'to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Zürich"}<|call|>' in text


@pytest.mark.parametrize("name, messages, message", [
    ("mistral-nemo", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "conversation roles must alternate"),
    ("mistral-nemo", SYSTEM_USER + [{"role": "assistant", "tool_calls": [tool_call("get_weather", {}, "call_1")]}],
     "Tool call IDs should be alphanumeric strings with length 9!"),
    ("llama3.1", SYSTEM_USER + [{"role": "assistant", "tool_calls": [
        tool_call("get_weather", {"city": "Paris"}), tool_call("search_docs", {"query": "x"}, "call00002")]}],
     "This model only supports single tool-calls at once!"),
    ("gpt-oss", [{"role": "user", "content": "hi"}, TOOL_ROUND[-1]],
     "Message has tool role, but there was no previous assistant message with a tool call!"),
    # Both drop None-valued keys, so Qwen3 finds no `content` on an OpenAI `content: null` tool-call message.
    ("qwen3", SYSTEM_USER + [{"role": "assistant", "content": None, "tool_calls": [tool_call("get_weather", {})]}],
     "has no attribute 'content'"),
])
def test_template_refusals_are_chat_template_errors(name, messages, message):
    with pytest.raises(jinja2.TemplateError, match=message):
        transformers_render(load_template(name), messages, SPECIAL_TOKENS[name], tools=TOOLS)
    with pytest.raises(ChatTemplateError, match=message):
        render_chat_template(load_template(name), messages, tools=TOOLS, special_tokens=SPECIAL_TOKENS[name])


def test_raise_exception_and_broken_templates():
    with pytest.raises(ChatTemplateError) as error:
        render_chat_template("{{ raise_exception('boom') }}", SYSTEM_USER)
    assert str(error.value) == "boom" and isinstance(error.value, ValueError)
    with pytest.raises(ChatTemplateError, match="syntax error at line 1"):
        render_chat_template("{% if %}", SYSTEM_USER)
    with pytest.raises(ChatTemplateError, match="TypeError"):  # a list content where the template adds strings
        render_chat_template("{{ 'x' + messages[0].content }}", [{"role": "user", "content": [{"type": "text"}]}])
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        render_chat_template("{% set ns = namespace(_hidden=1) %}", SYSTEM_USER)


def test_environment_matches_transformers():
    value = {"b": "<b>é & 'q'</b>", "a": [1, 2.5, None, True]}
    template = ("{{ v | tojson }}|{{ v | tojson(indent=2) }}|{{ v | tojson(sort_keys=true) }}|"
                "{{ v | tojson(separators=(',', ':')) }}|{{ v | tojson(ensure_ascii=true) }}|"
                "{{ v | tojson(indent=4, sort_keys=true, separators=(',', ': ')) }}|"
                "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|"
                "{{ dict(x=1) | tojson }}|{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}"
                "{% generation %}{{ m.content }}{% endgeneration %}{% break %}{% endfor %}|"
                "{% for d in documents %}{{ d.title }}: {{ d.text }};{% endfor %}|{{ bos_token }}{{ custom }}")
    special_tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    kwargs = dict(documents=DOCUMENTS, v=value, custom="!")
    ours = render_chat_template(template, SYSTEM_USER, special_tokens=special_tokens, **kwargs)
    assert ours == transformers_render(template, SYSTEM_USER, special_tokens, add_generation_prompt=True, **kwargs)
    assert ours.startswith(json.dumps(value, ensure_ascii=False) + "|")  # no HTML escaping, unlike jinja's tojson
    assert "|2|" in ours and "What is the weather in Zürich?" in ours and "Paris: Paris is the capital" in ours


def test_template_kwargs_cannot_replace_reserved_variables():
    for key in ("messages", "tools", "documents", "add_generation_prompt"):
        with pytest.raises(ChatTemplateError, match=key):
            render_chat_template("{{ messages }}", SYSTEM_USER, chat_template_kwargs={key: []})
    with pytest.raises(ChatTemplateError, match="messages"):
        render_chat_template("{{ messages }}", SYSTEM_USER, **{"messages": []})
    # Special tokens are not reserved: a kwarg overrides them, as in transformers.
    assert render_chat_template("{{ bos_token }}", SYSTEM_USER, special_tokens={"bos_token": "<s>"},
                                chat_template_kwargs={"bos_token": "B"}) == "B"


@pytest.fixture
def tokenizer_dir(tmp_path) -> str:
    train_tokenizer().save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast",
              "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True},
              "chat_template": load_template("llama3.1")}
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump(config, f)
    return str(tmp_path)


def test_tokenizer_passes_special_tokens_and_template_override(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    reference = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    assert tokenizer.special_tokens == reference.special_tokens_map
    ours = tokenizer.apply_chat_template(FOLLOW_UP, tools=TOOLS, chat_template_kwargs={"date_string": "1 Jan 2026"})
    assert ours == reference.apply_chat_template(FOLLOW_UP, tools=TOOLS, date_string="1 Jan 2026",
                                                 add_generation_prompt=True, tokenize=False)
    assert ours.startswith("<|begin_of_text|>") and "Today Date: 1 Jan 2026" in ours
    override = "{{ unk_token }}{{ messages | length }}{{ extra }}"
    assert tokenizer.apply_chat_template(SYSTEM_USER, chat_template=override, extra="!") == "<unk>2!"
