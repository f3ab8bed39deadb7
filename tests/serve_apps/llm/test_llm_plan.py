"""Planner arithmetic: M/D/1 prefill sizing and SLO-bounded decode batches."""

from __future__ import annotations

import math

import pytest

from serve_apps.llm.plan import Profile, mdl_ttft_s, recommend


def test_mdl_ttft():
    assert mdl_ttft_s(0.0, 0.5) == 0.5
    assert mdl_ttft_s(1.0, 0.5) == 0.5 + 0.5 * 0.5 / (2 * 0.5)  # every term a binary fraction: exact in float64
    assert mdl_ttft_s(2.0, 0.5) == math.inf


def test_recommend_sizes_each_role():
    profile = Profile(prompt_len=1024, prefill_s=0.2, decode_step_s={1: 0.01, 8: 0.02, 32: 0.08}, max_decode_batch=64)
    plan = recommend(profile, rate_rps=10, output_len=100, ttft_slo_s=0.5, tpot_slo_s=0.05)
    # Decode: batch 8 fits the TPOT SLO -> 8 / (0.02 * 100) = 4 rps per replica -> 3 replicas for 10 rps.
    assert plan.decode_batch == 8 and plan.num_decode == 3
    # Prefill: 10 rps over n replicas must keep the M/D/1 TTFT under 0.5 s.
    assert mdl_ttft_s(10 / plan.num_prefill, 0.2) <= 0.5 < mdl_ttft_s(10 / (plan.num_prefill - 1), 0.2)
    assert plan.ratio == f"{plan.num_prefill // math.gcd(plan.num_prefill, 3)}:{3 // math.gcd(plan.num_prefill, 3)}"


def test_recommend_reports_unreachable_slos():
    profile = Profile(prompt_len=8, prefill_s=2.0, decode_step_s={1: 0.5}, max_decode_batch=4)
    plan = recommend(profile, rate_rps=1, output_len=10, ttft_slo_s=1.0, tpot_slo_s=0.1, max_replicas=8)
    assert len(plan.notes) == 2
    with pytest.raises(ValueError, match="rate"):
        recommend(profile, rate_rps=0, output_len=10, ttft_slo_s=1, tpot_slo_s=1)


def test_measure_times_real_prefill_and_decode_engines(tmp_path):
    from fakes.engine_models import build_tiny_model

    from serve_apps.llm.plan import measure

    model = build_tiny_model(str(tmp_path / "tiny"))
    profile = measure(model, prompt_len=32, output_len=8, batch_sizes=[1, 2], engine_kwargs={"num_threads": 1},
                      repeats=1, decode_steps=2)
    assert profile.prefill_s > 0 and set(profile.decode_step_s) == {1, 2}
    assert profile.max_decode_batch >= 1
    plan = recommend(profile, rate_rps=1, output_len=8, ttft_slo_s=10, tpot_slo_s=10)
    assert plan.num_prefill >= 1 and plan.num_decode >= 1
