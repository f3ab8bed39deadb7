"""Reasoning parsers: `<think>...</think>` split off whole and streamed at every split, with the
newlines around the tags dropped and nothing else lost."""

from __future__ import annotations

import random

import pytest

from serve_apps.llm.reasoning_parsers import make_reasoning_parser, prompt_ends_in_thinking

# (parser, thinking_in_prompt, output, reasoning_content, content)
CASES = [
    ("qwen3", False, "<think>\nLet me see.\n\nYes.\n</think>\n\nThe answer is 4.", "Let me see.\n\nYes.", "The answer is 4."),
    ("qwen3", False, "The answer is 4.", None, "The answer is 4."),
    ("qwen3", False, "<think>\n\n</think>\n\nHi", None, "Hi"),
    ("qwen3", False, "<think>\nstill thinking when max_tokens hit\n", "still thinking when max_tokens hit", None),
    ("qwen3", False, "no think tag</think> here", None, "no think tag</think> here"),
    ("qwen3", False, "Lead <think>x < y and <thinking> </thin</think>\n tail\n", "x < y and <thinking> </thin", "Lead  tail\n"),
    ("qwen3", False, "", None, None),
    ("qwen3", True, "thought\n</think>\n\nanswer", "thought", "answer"),
    ("qwen3", True, "<think>\nthought</think>answer", "thought", "answer"),
    ("qwen3", True, "cut off <thi", "cut off <thi", None),
    ("deepseek_r1", False, "Okay, so 2+2.\n</think>\n\n**4**", "Okay, so 2+2.", "**4**"),
    ("deepseek_r1", False, "<think>\nOkay.\n</think>4", "Okay.", "4"),
    ("deepseek_r1", False, "never ends\n\n", "never ends", None),
    ("deepseek_r1", False, "\n</think>\n\nonly content", None, "only content"),
    ("deepseek_r1", False, "a</think>b</think>c<think>d", "a", "b</think>c<think>d"),
]


def stream(parser_name: str, thinking_in_prompt: bool, chunks: list[str]) -> tuple[str | None, str | None]:
    parser = make_reasoning_parser(parser_name, thinking_in_prompt=thinking_in_prompt)
    reasoning, content = "", ""
    for chunk in [*chunks, None]:
        r, c = parser.feed(chunk) if chunk is not None else parser.finish()
        reasoning, content = reasoning + r, content + c
    return reasoning or None, content or None


@pytest.mark.parametrize("parser_name,thinking_in_prompt,text,reasoning,content", CASES)
def test_extract_and_stream(parser_name, thinking_in_prompt, text, reasoning, content):
    parser = make_reasoning_parser(parser_name, thinking_in_prompt=thinking_in_prompt)
    assert parser.extract(text) == (reasoning, content)
    chunkings = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 4)))
        chunkings.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    for chunks in chunkings:
        assert stream(parser_name, thinking_in_prompt, chunks) == (reasoning, content), chunks


def test_in_reasoning_follows_the_tags():
    parser = make_reasoning_parser("deepseek_r1")
    states = []
    for char in "ab</think>cd":
        parser.feed(char)
        states.append(parser.in_reasoning)
    assert states == [True] * 9 + [False] * 3  # a partial "</think" still counts as reasoning
    qwen = make_reasoning_parser("qwen3")
    assert not qwen.in_reasoning
    qwen.feed("<think>")
    assert qwen.in_reasoning
    assert make_reasoning_parser("qwen3", thinking_in_prompt=True).in_reasoning


def test_prompt_ends_in_thinking():
    assert prompt_ends_in_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_ends_in_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_ends_in_thinking("<|im_start|>assistant\n")


def test_unknown_parser():
    with pytest.raises(ValueError, match=r"'nope'.*deepseek_r1, qwen3"):
        make_reasoning_parser("nope")
