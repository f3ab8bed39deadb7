"""`python -m serve_apps.llm` flags (vLLM's names) into LLMServingArgs and engine kwargs; no Ray is started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from serve_apps.llm import __main__ as cli
from serve_apps.llm.__main__ import main, parse_args, serving_args
from serve_apps.llm.config import REASONING_PARSERS, TOOL_CALL_PARSERS, LLMConfig

REPO = os.path.join(os.path.dirname(__file__), "..", "..", "..")
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def test_engine_flags_reach_engine_kwargs_and_only_those_given():
    args = parse_args(["--model", "/m/a", "--max-num-seqs", "8", "--max-num-batched-tokens", "512",
                       "--block-size", "32", "--kv-cache-dtype", "int8", "--quantization", "fp8", "--dtype", "float32",
                       "--max-model-len", "1024", "--no-enable-prefix-caching"])
    [config] = serving_args(args).llm_configs
    assert config.engine_kwargs == {"max_num_seqs": 8, "max_num_batched_tokens": 512, "block_size": 32,
                                    "kv_cache_dtype": "int8", "quantization": "fp8", "dtype": "float32",
                                    "max_model_len": 1024, "enable_prefix_caching": False}
    [on] = serving_args(parse_args(["--model", "/m/a", "--enable-prefix-caching"])).llm_configs
    assert on.engine_kwargs == {"enable_prefix_caching": True}
    [bare] = serving_args(parse_args(["--model", "/m/a"])).llm_configs
    assert bare.engine_kwargs == {}


def test_engine_kwargs_are_engine_config_fields_and_the_choices_are_the_engines():
    from runtime.engine.config import DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, EngineConfig

    assert cli.DTYPES == DTYPES and cli.KV_CACHE_DTYPES == KV_CACHE_DTYPES
    assert cli.QUANTIZATIONS == tuple(q for q in QUANTIZATIONS if q is not None)
    args = parse_args(["--model", "/m/a", "--max-num-seqs", "8", "--max-num-batched-tokens", "512",
                       "--block-size", "32", "--kv-cache-dtype", "int8", "--quantization", "int8",
                       "--enable-prefix-caching"])
    engine = EngineConfig(model="/m/a", **serving_args(args).llm_configs[0].engine_kwargs)
    assert (engine.max_num_seqs, engine.block_size, engine.kv_cache_dtype) == (8, 32, "int8")


def test_chat_api_flags_reach_llm_config(tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    args = parse_args(["--model", "/m/a", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                       "--reasoning-parser", "qwen3", "--chat-template", str(template),
                       "--generation-config", "vllm"])
    [config] = serving_args(args).llm_configs
    assert (config.tool_call_parser, config.enable_auto_tool_choice, config.reasoning_parser) == ("hermes", True, "qwen3")
    assert config.chat_template == TEMPLATE  # the file's text, so replicas need not see the file
    assert config.generation_config == "vllm"
    [default] = serving_args(parse_args(["--model", "/m/a"])).llm_configs
    assert (default.tool_call_parser, default.enable_auto_tool_choice, default.reasoning_parser) == (None, False, None)
    assert (default.chat_template, default.generation_config) == (None, "auto")


def test_served_model_name_and_its_model_id_alias_name_each_model():
    args = parse_args(["--model", "/m/a", "--model", "/m/b", "--served-model-name", "first", "--model-id", "second"])
    assert [c.model_id for c in serving_args(args).llm_configs] == ["first", "second"]
    old = parse_args(["--model", "/m/a", "--model-id", "legacy"])
    assert [c.model_id for c in serving_args(old).llm_configs] == ["legacy"]
    with pytest.raises(ValueError, match=r"one --served-model-name \(or --model-id\) per --model \(2\), got 1"):
        serving_args(parse_args(["--model", "/m/a", "--model", "/m/b", "--served-model-name", "x"]))


def test_auto_tool_choice_without_a_parser_names_both_flags(capsys):
    with pytest.raises(ValidationError, match=r"enable_auto_tool_choice \(--enable-auto-tool-choice\) needs "
                                              r"tool_call_parser \(--tool-call-parser"):
        serving_args(parse_args(["--model", "/m/a", "--enable-auto-tool-choice"]))
    with pytest.raises(SystemExit) as exit_info:  # main reports it as a usage error before it connects to Ray
        main(["--model", "/m/a", "--enable-auto-tool-choice"])
    assert exit_info.value.code == 2
    assert "--enable-auto-tool-choice) needs tool_call_parser" in capsys.readouterr().err


@pytest.mark.parametrize("flag, choices", [("--tool-call-parser", TOOL_CALL_PARSERS),
                                           ("--reasoning-parser", REASONING_PARSERS)])
def test_an_unknown_parser_name_lists_the_choices(flag, choices, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "/m/a", flag, "nope"])
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice: 'nope'" in err and all(name in err for name in choices)


def test_llm_config_checks_parser_names_and_chat_templates():
    with pytest.raises(ValidationError, match=r"tool_call_parser\n.*one of \('hermes', 'llama3_json', 'mistral'\)"):
        LLMConfig(model_source="/m/a", tool_call_parser="nope")
    with pytest.raises(ValidationError, match=r"reasoning_parser\n.*one of \('qwen3', 'deepseek_r1'\)"):
        LLMConfig(model_source="/m/a", reasoning_parser="nope")
    assert LLMConfig(model_source="/m/a", chat_template=TEMPLATE).chat_template == TEMPLATE
    with pytest.raises(ValidationError, match=r"chat_template 'missing.jinja' is neither a file nor a Jinja template"):
        LLMConfig(model_source="/m/a", chat_template="missing.jinja")
    with pytest.raises(ValidationError, match="extra"):
        LLMConfig(model_source="/m/a", tool_parser="hermes")  # extra="forbid" still holds


def test_engine_sizes_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "/m/a", "--block-size", "0"])
    assert "argument --block-size: must be >= 1, got 0" in capsys.readouterr().err


def test_help_shows_every_flag_and_the_usage_examples():
    result = subprocess.run([sys.executable, "-m", "serve_apps.llm", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    out = result.stdout
    for flag in ("--served-model-name", "--model-id", "--enable-prefix-caching", "--no-enable-prefix-caching",
                 "--max-num-seqs", "--max-num-batched-tokens", "--block-size", "--kv-cache-dtype", "--quantization",
                 "--chat-template", "--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser",
                 "--generation-config"):
        assert flag in out
    assert "Examples:" in out
    assert "--model Qwen/Qwen3-0.6B --enable-auto-tool-choice --tool-call-parser hermes" in out
    assert "--reasoning-parser qwen3" in out
    parser = cli.build_parser()
    undocumented = [action.option_strings for action in parser._actions if not action.help]
    assert undocumented == []
