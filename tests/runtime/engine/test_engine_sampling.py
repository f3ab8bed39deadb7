"""SamplingParams validation and the sampler's filters, penalties and seeds."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tolerances import reduction_tolerance

from runtime.engine.sampler import Sampler, SampleRow
from runtime.engine.sampling_params import SamplingParams


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 1.5),
    ("presence_penalty", 3.0), ("frequency_penalty", -2.5), ("repetition_penalty", 0.0), ("max_tokens", 0),
    ("logprobs", -1), ("stop", [""]),
])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stop_normalized_to_list():
    assert SamplingParams(stop="x").stop_strings == ["x"]
    assert SamplingParams(stop=["a", "b"]).stop_strings == ["a", "b"]
    assert SamplingParams(top_k=0).top_k == -1


def row(params: SamplingParams, tokens=(), counts=None, seed=None) -> SampleRow:
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return SampleRow(params=params, token_ids=list(tokens), output_token_counts=counts or {}, generator=generator)


def test_greedy_top_k_one_and_min_p_one_pick_the_argmax():
    sampler = Sampler(torch.device("cpu"), seed=0)
    logits = torch.randn(3, 50)
    expected = logits.argmax(dim=-1).tolist()
    rows = [row(SamplingParams(temperature=0)), row(SamplingParams(top_k=1)), row(SamplingParams(min_p=1.0))]
    assert sampler(logits, rows).token_ids == expected


def test_top_p_keeps_only_the_nucleus():
    sampler = Sampler(torch.device("cpu"), seed=0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]]))
    picks = {sampler(logits, [row(SamplingParams(top_p=0.75))]).token_ids[0] for _ in range(200)}
    assert picks == {0, 1}


def test_top_k_restricts_and_temperature_spreads():
    sampler = Sampler(torch.device("cpu"), seed=0)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    picks = {sampler(logits, [row(SamplingParams(top_k=2, temperature=5.0))]).token_ids[0] for _ in range(200)}
    assert picks == {0, 1}


def test_seeded_rows_are_independent_of_batch_neighbours():
    logits = torch.randn(4, 100)
    params = SamplingParams(temperature=1.0, seed=5)
    alone = [Sampler(torch.device("cpu"), 0)(logits[1:2], [row(params, seed=5)]).token_ids[0]]
    gen = row(params, seed=5).generator
    sampler = Sampler(torch.device("cpu"), 1)
    picks = []
    for _ in range(5):
        rows = [row(SamplingParams()), SampleRow(params=params, token_ids=[], output_token_counts={}, generator=gen),
                row(SamplingParams(temperature=0)), row(SamplingParams(top_p=0.5))]
        picks.append(sampler(logits, rows).token_ids[1])
    solo_gen = torch.Generator().manual_seed(5)
    solo = Sampler(torch.device("cpu"), 0)
    solo_picks = [solo(logits[1:2], [SampleRow(params=params, token_ids=[], output_token_counts={},
                                               generator=solo_gen)]).token_ids[0] for _ in range(5)]
    assert picks == solo_picks and picks[0] == alone[0]


def test_penalties_change_the_greedy_choice():
    sampler = Sampler(torch.device("cpu"), seed=0)
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    assert sampler(logits, [row(SamplingParams(temperature=0))]).token_ids == [0]
    rep = SamplingParams(temperature=0, repetition_penalty=1.2)
    assert sampler(logits, [row(rep, tokens=[0])]).token_ids == [1]
    pres = SamplingParams(temperature=0, presence_penalty=0.5)
    assert sampler(logits, [row(pres, counts={0: 1})]).token_ids == [1]
    freq = SamplingParams(temperature=0, frequency_penalty=0.05)
    assert sampler(logits, [row(freq, counts={0: 1})]).token_ids == [0]
    assert sampler(logits, [row(freq, counts={0: 3})]).token_ids == [1]
    assert torch.equal(logits, torch.tensor([[2.0, 1.9, 0.0]]))  # the caller's logits are untouched


def test_logprobs_are_raw_log_softmax():
    sampler = Sampler(torch.device("cpu"), seed=0)
    logits = torch.randn(1, 30)
    result = sampler(logits, [row(SamplingParams(temperature=0, logprobs=2))])
    expected = torch.log_softmax(logits[0], dim=-1)
    top = expected.topk(2)
    assert set(result.logprobs[0]) == set(top.indices.tolist())
    # log_softmax = x - logsumexp(x): the sum of 30 exponentials rounds (its relative error becomes an
    # absolute one in the log), then the subtraction at the scale of |x| + log(30)
    tol = reduction_tolerance(logits.shape[-1], float(logits.abs().max()) + math.log(logits.shape[-1]))
    assert result.logprobs[0][result.token_ids[0]] == pytest.approx(float(expected.max()), abs=tol, rel=0)
