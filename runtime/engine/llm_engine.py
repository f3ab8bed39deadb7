"""LLMEngine: the online API (add_request / step / abort_request) over scheduler, runner, sampler.

Roles: "both" serves a request end to end; "prefill" stops each request after its first token and
returns its prompt K/V as a KVPackage; "decode" continues from such a package without recomputing
the prompt (and prefills plain requests itself, the fallback when a prefill fails). A request with
structured outputs carries its grammar in SamplingParams; the prefill samples the first token under
it and the decode engine rebuilds the matcher by replaying that token (structured_outputs.py).
What step() returns for a request follows its SamplingParams.output_kind: the whole output so far
(cumulative, the default), only what is new (delta: what a streaming server wants, O(new tokens) per
step), or one output when it finishes (final_only: what LLM.generate uses).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from runtime.engine.block_manager import BlockManager
from runtime.engine.config import EngineConfig
from runtime.engine.kv_package import KVPackage
from runtime.engine.model_runner import ModelRunner
from runtime.engine.output_processor import OutputProcessor
from runtime.engine.outputs import RequestOutput
from runtime.engine.sampler import Sampler, SampleRow
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.scheduler import Scheduler, SchedulerConfig
from runtime.engine.sequence import Request, Sequence, SequenceStatus
from runtime.engine.structured_outputs import GrammarBackend, grammar_matchers_to_sample
from runtime.engine.tokenizer import Tokenizer


class LLMEngine:
    def __init__(self, model: str, **kwargs):
        self.config = config = EngineConfig(model=model, **kwargs)
        self.role = config.role
        self.runner = ModelRunner(config)
        self.tokenizer = Tokenizer(model, self.runner.hf_config)
        self.model_name = os.path.basename(os.path.normpath(model))
        self.max_model_len = self.runner.max_model_len
        self.block_size = config.block_size
        self.vocab_size = self.runner.model.args.vocab_size
        self.block_manager = BlockManager(self.runner.kv_cache.num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
            enable_chunked_prefill=config.enable_chunked_prefill), self.block_manager)
        self.grammar = GrammarBackend(self.tokenizer.to_json(), max(self.vocab_size, self.tokenizer.vocab_size),
                                      sorted(self.tokenizer.eos_token_ids), num_threads=config.num_threads)
        self.sampler = Sampler(self.runner.device, config.seed, self.grammar)
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self._ready: list[Request] = []  # finished without a step (e.g. a package whose first token ends it)
        self._arrivals = 0
        self.num_prompt_tokens_computed = 0
        self.num_generation_tokens = 0

    # -- requests --------------------------------------------------------------------------------

    def _prompt_ids(self, prompt: str | list[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("prompt dict needs 'prompt_token_ids' or 'prompt'")
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        return None, [int(t) for t in prompt]

    def add_request(self, request_id: str, prompt: str | list[int] | dict, params: SamplingParams | None = None,
                    kv_package: KVPackage | None = None) -> None:
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        params = params or SamplingParams()
        text, ids = self._prompt_ids(prompt)
        if not ids:
            raise ValueError("prompt must contain at least one token")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"prompt_token_ids must be in [0, {self.vocab_size}), got {min(ids)}..{max(ids)}")
        if self.role == "prefill" and params.n != 1:
            raise ValueError(f"SamplingParams.n must be 1 on a prefill-role engine, got {params.n}")
        params.check_vocab(self.vocab_size)
        matcher = self.grammar.compile(params.structured_outputs) if params.structured_outputs else None
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.runner.device)
            generator.manual_seed(params.seed)
        request = Request(request_id, text, ids, params, self._arrivals, generator)
        request.seqs[0].matcher = matcher
        self._arrivals += 1
        if kv_package is not None:
            self._attach_package(request, kv_package)
        self.requests[request_id] = request
        if request.is_finished:
            self._ready.append(request)
        else:
            for seq in request.seqs:
                self.scheduler.add(seq)

    def _attach_package(self, request: Request, pkg: KVPackage) -> None:
        if self.role == "prefill":
            raise ValueError("kv_package is only accepted by role='decode' or 'both' engines")
        if pkg.model_fingerprint != self.runner.fingerprint:
            raise ValueError(f"kv_package of {pkg.request_id!r} comes from another model "
                             f"(fingerprint {pkg.model_fingerprint} != {self.runner.fingerprint})")
        args = self.runner.model.args
        expected = (args.num_layers, len(request.prompt_token_ids), args.num_kv_heads, args.head_dim)
        if list(pkg.prompt_token_ids) != request.prompt_token_ids or tuple(pkg.k.shape) != expected:
            raise ValueError(f"kv_package of {pkg.request_id!r} does not match the prompt: K/V shape "
                             f"{tuple(pkg.k.shape)} vs {expected}")
        seq = request.seqs[0]
        if pkg.rng_state is not None and request.generator is not None:
            request.generator.set_state(torch.from_numpy(np.asarray(pkg.rng_state)))
        request.first_scheduled_time = request.arrival_time
        # Also replays the first token into the request's grammar matcher (compiled in add_request).
        reason = self.outputs.append_token(seq, pkg.first_token_id, pkg.first_token_logprobs)
        if reason is not None:
            seq.finish_reason = reason
            seq.status = SequenceStatus.FINISHED
            return
        seq.num_computed_tokens = len(request.prompt_token_ids)
        seq.pending_kv = pkg

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return bool(self._ready) or self.scheduler.has_unfinished()

    # -- the step --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        ready, self._ready = self._ready, []
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return self._emit_all(ready)
        now = time.time()
        for seq in sched.seqs:
            if seq.request.first_scheduled_time is None:
                seq.request.first_scheduled_time = now
        self.grammar.prefetch(grammar_matchers_to_sample(sched.seqs, sched.num_new_tokens))
        logits, sample_seqs = self.runner.execute(sched.seqs, sched.num_new_tokens)
        for seq, n in zip(sched.seqs, sched.num_new_tokens):
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                self.num_prompt_tokens_computed += min(n, seq.num_prompt_tokens - seq.num_computed_tokens)
            seq.num_computed_tokens += n
            self.block_manager.cache_full_blocks(seq)
        rows, row_seqs, logit_rows = self._sample_rows(sample_seqs)
        if rows:
            result = self.sampler(logits[logit_rows] if len(logit_rows) != len(sample_seqs) else logits, rows)
            self.num_generation_tokens += len(rows)
            for seq, token_id, logprobs in zip(row_seqs, result.token_ids, result.logprobs):
                reason = self.outputs.append_token(seq, token_id, logprobs)
                if reason is not None:
                    self.scheduler.finish(seq, reason)
                elif self.role == "prefill":
                    self._package(seq)
        advanced = dict.fromkeys(seq.request for seq in row_seqs)
        return self._emit_all(ready + list(advanced))

    def _sample_rows(self, sample_seqs: list[Sequence]) -> tuple[list[SampleRow], list[Sequence], list[int]]:
        """One row per sequence; a request with n > 1 forks its children at its first token."""
        rows, row_seqs, logit_rows = [], [], []
        for r, seq in enumerate(sample_seqs):
            request = seq.request
            group = [seq]
            if request.params.n > 1 and len(request.seqs) == 1 and seq.num_output_tokens == 0:
                for index in range(1, request.params.n):
                    child = Sequence(request, list(request.prompt_token_ids), len(request.prompt_token_ids), index)
                    child.matcher = seq.matcher.deep_copy() if seq.matcher is not None else None
                    request.seqs.append(child)
                    self.scheduler.add_forked(seq, child)
                    group.append(child)
            for member in group:
                rows.append(SampleRow(params=request.params, token_ids=member.token_ids,
                                      output_token_counts=member.output_token_counts, generator=request.generator,
                                      matcher=member.matcher))
                row_seqs.append(member)
                logit_rows.append(r)
        return rows, row_seqs, logit_rows

    def _package(self, seq: Sequence) -> None:
        request = seq.request
        k, v = self.runner.read_kv(seq, seq.num_prompt_tokens)
        request.kv_package = KVPackage(
            request_id=request.request_id, prompt_token_ids=list(request.prompt_token_ids),
            first_token_id=seq.token_ids[-1], params=request.params,
            k=KVPackage.to_numpy(k), v=KVPackage.to_numpy(v), dtype=str(k.dtype).removeprefix("torch."),
            model_fingerprint=self.runner.fingerprint,
            rng_state=request.generator.get_state().numpy() if request.generator is not None else None,
            first_token_logprobs=seq.logprobs[-1] if seq.logprobs else None, prompt=request.prompt)
        self.scheduler.finish(seq, None)  # handed over: finished here, the decode engine continues it

    def _emit_all(self, requests: list[Request]) -> list[RequestOutput]:
        """The requests' outputs (a FINAL_ONLY request has none until it finishes); forgets finished ones."""
        outputs = []
        for request in requests:
            output = self.outputs.make_output(request)
            if output is None:
                continue
            if output.finished:
                self.requests.pop(request.request_id, None)
                request.kv_package = None
            outputs.append(output)
        return outputs

    # -- introspection ---------------------------------------------------------------------------

    def stats(self) -> dict:
        bm = self.block_manager
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_free_blocks": bm.num_free_blocks,
            "num_total_blocks": bm.num_blocks,
            "kv_cache_usage": bm.usage,
            "prefix_cache_hit_rate": bm.prefix_cache_hit_rate,
            "num_prompt_tokens_computed": self.num_prompt_tokens_computed,
            "num_generation_tokens": self.num_generation_tokens,
            "num_preemptions": self.scheduler.num_preemptions,
        }

    def memory_report(self) -> dict:
        return self.runner.memory_report()

    def reset_prefix_cache(self) -> None:
        self.block_manager.reset_prefix_cache()
