"""LLM: offline batch generation, vLLM-shaped.

    python -m runtime.engine.llm --model DIR --prompt "Hello" [--max-tokens 32] [--quantization int8]
    ray job submit --working-dir . -- python -m runtime.engine.llm --model DIR --prompt "Hello"
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

from runtime.engine.llm_engine import LLMEngine
from runtime.engine.outputs import RequestOutput
from runtime.engine.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    def __init__(self, model: str, **kwargs):
        self.llm_engine = LLMEngine(model, **kwargs)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        elif prompts and isinstance(prompts[0], int):
            raise ValueError("prompts: pass token ids as {'prompt_token_ids': [...]}, as vLLM does")
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"sampling_params has {len(sampling_params)} entries for {len(prompts)} prompts")
        # Offline callers want whole outputs, once: FINAL_ONLY skips every intermediate output.
        final_only = {id(p): dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY)
                      for p in sampling_params}
        sampling_params = [final_only[id(p)] for p in sampling_params]
        engine = self.llm_engine
        order = {}
        for prompt, params in zip(prompts, sampling_params):
            request_id = str(next(self._ids))
            order[request_id] = len(order)
            engine.add_request(request_id, prompt, params)
        finished: dict[str, RequestOutput] = {}
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return sorted(finished.values(), key=lambda o: order[o.request_id])

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None) -> RequestOutput:
        text = self.llm_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.llm_engine.tokenizer.encode(text, add_special_tokens=False)
        return self.generate({"prompt_token_ids": ids, "prompt": text}, sampling_params)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None)
    args = parser.parse_args()
    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization)
    for output in llm.generate(args.prompt, SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)):
        print(repr(output.prompt), "->", repr(output.outputs[0].text))


if __name__ == "__main__":
    main()
