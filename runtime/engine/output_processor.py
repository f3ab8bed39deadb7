"""Per-token bookkeeping after sampling: stop conditions, detokenization, and the outputs a request streams
(cumulative, delta or final only)."""

from __future__ import annotations

import time

from runtime.engine.outputs import CompletionOutput, RequestOutput
from runtime.engine.sampling_params import RequestOutputKind
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
        if delta and self._add_text(seq, delta):
            return "stop"
        if grammar_reason is not None:  # the grammar is complete: nothing more may follow
            return grammar_reason
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _add_text(seq: Sequence, delta: str) -> bool:
        """Append new text; True when a stop string ends the sequence (the text is cut at it).

        Only the unsettled tail is searched and cut: text settles once it lies more than the longest stop
        string minus one character before the end, so no later match can start in it."""
        params = seq.request.params
        text = seq.unsettled_text + delta
        if params.stop_strings:
            hits = [(i, s) for i, s in ((text.find(s), s) for s in params.stop_strings) if i >= 0]
            if hits:
                index, stop = min(hits)
                seq.unsettled_text = text[:index + len(stop)] if params.include_stop_str_in_output else text[:index]
                seq.finish_reason = "stop"
                return True
        holdback = max((len(s) for s in params.stop_strings), default=1) - 1
        if len(text) > holdback:
            seq.settled_text.append(text[:len(text) - holdback])
            text = text[len(text) - holdback:]
        seq.unsettled_text = text
        return False

    def make_output(self, request: Request) -> RequestOutput | None:
        """The request's next RequestOutput in its params' output_kind (None for FINAL_ONLY until it finishes).

        CUMULATIVE: the whole output so far, with the deltas since the previous output beside it. DELTA:
        only the new tokens, text and logprobs, with their offsets in the whole output; O(new tokens).
        Text a stop string could still cut is held back until the sequence finishes."""
        kind = request.params.output_kind
        finished = request.is_finished
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        completions = [self._completion(seq, delta=kind is RequestOutputKind.DELTA) for seq in request.seqs]
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

    @staticmethod
    def _completion(seq: Sequence, *, delta: bool) -> CompletionOutput:
        if seq.is_finished and seq.unsettled_text:  # nothing can cut it any more
            seq.settled_text.append(seq.unsettled_text)
            seq.unsettled_text = ""
        new_text = "".join(seq.settled_text[seq.num_emitted_parts:])
        token_offset, text_offset = seq.num_emitted_tokens, seq.num_emitted_chars
        new_ids = seq.token_ids[seq.num_prompt_tokens + token_offset:]
        logprobs = seq.logprobs
        seq.num_emitted_tokens += len(new_ids)
        seq.num_emitted_chars += len(new_text)
        if delta:
            seq.settled_text.clear()  # handed out, and never needed again: the text's memory stays O(new)
            return CompletionOutput(
                index=seq.index, text=new_text, token_ids=new_ids, delta_text=new_text, delta_token_ids=new_ids,
                token_offset=token_offset, text_offset=text_offset, finish_reason=seq.finish_reason,
                logprobs=logprobs[token_offset:] if logprobs is not None else None,
                cumulative_logprob=seq.cumulative_logprob)
        text = "".join(seq.settled_text)
        seq.settled_text[:] = [text] if text else []  # the next cumulative output joins two chunks, not all
        seq.num_emitted_parts = len(seq.settled_text)
        return CompletionOutput(
            index=seq.index, text=text, token_ids=seq.output_token_ids, delta_text=new_text, delta_token_ids=new_ids,
            finish_reason=seq.finish_reason, logprobs=list(logprobs) if logprobs is not None else None,
            cumulative_logprob=seq.cumulative_logprob)
