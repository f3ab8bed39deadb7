"""Per-token bookkeeping after sampling: stop conditions, detokenization, streamed deltas."""

from __future__ import annotations

import time

from runtime.engine.outputs import CompletionOutput, RequestOutput
from runtime.engine.sequence import Request, Sequence
from runtime.engine.structured_outputs import advance
from runtime.engine.tokenizer import Tokenizer, detokenize_incrementally


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def append_token(self, seq: Sequence, token_id: int, logprobs: dict[int, float] | None) -> str | None:
        """Add a sampled token; returns the finish reason if the sequence is done ("stop"/"length"; "abort"
        if the token broke the sequence's grammar)."""
        request = seq.request
        params = request.params
        if request.first_token_time is None:
            request.first_token_time = time.time()
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.tokenizer.eos_token_ids):
            seq.finish_reason = "stop"
            return "stop"  # the stop token itself is not part of the output
        seq.append_token(token_id)
        grammar_reason = advance(seq.matcher, token_id) if seq.matcher is not None else None
        if logprobs is not None and seq.logprobs is not None:
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[token_id]
        delta, seq.prefix_offset, seq.read_offset = detokenize_incrementally(
            self.tokenizer, seq.token_ids, seq.prefix_offset, seq.read_offset, params.skip_special_tokens)
        if delta:
            seq.output_text += delta
            if params.stop_strings and self._truncate_at_stop(seq, len(delta)):
                return "stop"
        if grammar_reason is not None:  # the grammar is complete: nothing more may follow
            return grammar_reason
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _truncate_at_stop(seq: Sequence, delta_len: int) -> bool:
        text = seq.output_text
        longest = max(len(s) for s in seq.request.params.stop_strings)
        start = max(0, len(text) - delta_len - longest + 1)
        hits = [(text.find(s, start), s) for s in seq.request.params.stop_strings]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        seq.output_text = text[:index + len(stop)] if seq.request.params.include_stop_str_in_output else text[:index]
        seq.finish_reason = "stop"
        return True

    def make_output(self, request: Request) -> RequestOutput:
        """A RequestOutput with cumulative state and the deltas since the previous one."""
        params = request.params
        holdback = max((len(s) for s in params.stop_strings), default=1) - 1
        completions = []
        for seq in request.seqs:
            text = seq.output_text
            if holdback and not seq.is_finished:  # a partial stop string must not be streamed
                text = text[:max(len(text) - holdback, seq.num_emitted_chars)]
            output_ids = seq.output_token_ids
            completions.append(CompletionOutput(
                index=seq.index, text=text, token_ids=output_ids,
                delta_text=text[seq.num_emitted_chars:], delta_token_ids=output_ids[seq.num_emitted_tokens:],
                finish_reason=seq.finish_reason,
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                cumulative_logprob=seq.cumulative_logprob,
            ))
            seq.num_emitted_chars = len(text)
            seq.num_emitted_tokens = len(output_ids)
        finished = request.is_finished
        if finished and request.finished_time is None:
            request.finished_time = time.time()
        num_generation_tokens = sum(seq.num_output_tokens for seq in request.seqs)
        return RequestOutput(
            request_id=request.request_id, prompt=request.prompt, prompt_token_ids=request.prompt_token_ids,
            outputs=completions, finished=finished, kv_package=request.kv_package if finished else None,
            metrics={
                "arrival_time": request.arrival_time,
                "first_scheduled_time": request.first_scheduled_time,
                "first_token_time": request.first_token_time,
                "finished_time": request.finished_time,
                "num_prompt_tokens": len(request.prompt_token_ids),
                "num_generation_tokens": num_generation_tokens,
                "num_cached_tokens": request.num_cached_tokens,
            },
        )
