"""Token sampling: grammar masks, allowed tokens, logit bias, penalties, greedy, temperature, top-k, top-p, min-p, per-request seeds, logprobs.

Sampling uses the exponential race (argmax of p / Exp(1) noise), so a seeded request draws exactly
one vocabulary-sized noise vector per token from its own generator: the same seed gives the same
tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from runtime.engine.sampling_params import SamplingParams
from runtime.engine.structured_outputs import GrammarBackend

if TYPE_CHECKING:
    import llguidance


@dataclass(slots=True)
class SampleRow:
    params: SamplingParams
    token_ids: list[int]  # prompt + output so far (repetition penalty)
    output_token_counts: dict[int, int]  # presence / frequency penalties
    generator: torch.Generator | None
    matcher: llguidance.LLMatcher | None = None  # the sequence's grammar state (structured outputs)


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # chosen token first, then the top alternatives


class Sampler:
    def __init__(self, device: torch.device, seed: int, grammar: GrammarBackend | None = None):
        self.device = device
        self.grammar = grammar
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @torch.inference_mode()  # the runner's logits are inference tensors, updated here in place
    def __call__(self, raw_logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
        """One token per row. Grammar masks, allowed_token_ids and logit_bias are applied to `raw_logits`
        in place (a full-vocabulary copy per step costs as much as the masks themselves)."""
        want_logprobs = [row.params.logprobs is not None for row in rows]
        raw_logprobs = torch.log_softmax(raw_logits, dim=-1) if any(want_logprobs) else None
        logits = self._constrain(raw_logits, rows)
        if any(row.params.has_penalties for row in rows):
            logits = logits.clone()
            for r, row in enumerate(rows):
                if row.params.has_penalties:
                    self._apply_penalties(logits[r], row)
        greedy = [row.params.greedy for row in rows]
        if all(greedy):
            token_ids = logits.argmax(dim=-1).tolist()
        else:
            token_ids = self._sample(logits, rows, greedy)
        logprobs: list[dict[int, float] | None] = [None] * len(rows)
        if raw_logprobs is not None:
            for r, row in enumerate(rows):
                if want_logprobs[r]:
                    logprobs[r] = self._logprobs(raw_logprobs[r], token_ids[r], row.params.logprobs)
        return SampleResult(token_ids=token_ids, logprobs=logprobs)

    def _constrain(self, logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        """Grammar masks, allowed_token_ids and logit_bias, in place (the raw logprobs are taken before).
        Masked tokens become -inf, so no penalty or bias can bring them back."""
        matchers = [(row.matcher, r) for r, row in enumerate(rows) if row.matcher is not None]
        if matchers:
            forbidden = self.grammar.forbidden(matchers, len(rows), logits.shape[1], logits.device)
            logits.masked_fill_(forbidden, float("-inf"))
        for r, row in enumerate(rows):
            params = row.params
            if params.allowed_token_ids:
                keep = torch.tensor(params.allowed_token_ids, device=logits.device)
                kept = logits[r, keep]
                logits[r].fill_(float("-inf"))
                logits[r, keep] = kept
            if params.logit_bias:
                ids = torch.tensor(list(params.logit_bias), device=logits.device)
                logits[r, ids] += torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype,
                                               device=logits.device)
        return logits

    def _apply_penalties(self, logits: torch.Tensor, row: SampleRow) -> None:
        p = row.params
        if p.repetition_penalty != 1.0:
            ids = torch.tensor(sorted(set(row.token_ids)), dtype=torch.long, device=logits.device)
            values = logits[ids]
            logits[ids] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and row.output_token_counts:
            ids = torch.tensor(list(row.output_token_counts), dtype=torch.long, device=logits.device)
            counts = torch.tensor(list(row.output_token_counts.values()), dtype=logits.dtype, device=logits.device)
            logits[ids] -= p.frequency_penalty * counts + p.presence_penalty

    def _sample(self, logits: torch.Tensor, rows: list[SampleRow], greedy: list[bool]) -> list[int]:
        num_rows, vocab = logits.shape
        temps = torch.tensor([1.0 if g else row.params.temperature for g, row in zip(greedy, rows)],
                             dtype=logits.dtype, device=logits.device)
        probs = torch.softmax(logits / temps[:, None], dim=-1)
        top_ks = [row.params.top_k for row in rows]
        top_ps = [row.params.top_p for row in rows]
        if any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            ranks = torch.arange(vocab, device=logits.device)[None, :]
            k = torch.tensor([k if k > 0 else vocab for k in top_ks], device=logits.device)[:, None]
            cut = ranks >= k
            top_p = torch.tensor(top_ps, dtype=probs.dtype, device=logits.device)[:, None]
            cut |= (sorted_probs.cumsum(dim=-1) - sorted_probs) > top_p  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        min_ps = [row.params.min_p for row in rows]
        if any(m > 0 for m in min_ps):
            min_p = torch.tensor(min_ps, dtype=probs.dtype, device=logits.device)[:, None]
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        noise = torch.empty_like(probs)
        unseeded = [r for r, row in enumerate(rows) if row.generator is None and not greedy[r]]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), vocab, device=logits.device).exponential_(
                generator=self.generator)
        for r, row in enumerate(rows):
            if row.generator is not None and not greedy[r]:
                noise[r].exponential_(generator=row.generator)
        sampled = (probs / noise).argmax(dim=-1)
        if any(greedy):
            sampled = torch.where(torch.tensor(greedy, device=logits.device), logits.argmax(dim=-1), sampled)
        return sampled.tolist()

    @staticmethod
    def _logprobs(logprobs: torch.Tensor, chosen: int, num_top: int) -> dict[int, float]:
        out = {chosen: float(logprobs[chosen])}
        if num_top:
            values, ids = logprobs.topk(num_top)
            for token, value in zip(ids.tolist(), values.tolist()):
                out.setdefault(token, value)
        return out
