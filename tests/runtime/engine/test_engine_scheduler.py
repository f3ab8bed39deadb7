"""Scheduler: continuous batching limits, chunked prefill, decode-first fairness, preemption."""

from __future__ import annotations

from runtime.engine.block_manager import BlockManager
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.scheduler import Scheduler, SchedulerConfig
from runtime.engine.sequence import Request, Sequence, SequenceStatus


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=4, max_num_batched_tokens=16, chunked=True):
    bm = BlockManager(num_blocks, block_size)
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                             enable_chunked_prefill=chunked)
    return Scheduler(config, bm)


def add(sched: Scheduler, num_tokens: int, order: int) -> Sequence:
    seq = Request(f"r{order}", None, list(range(100 * order, 100 * order + num_tokens)), SamplingParams(),
                  order, None).seqs[0]
    sched.add(seq)
    return seq


def run_step(sched: Scheduler, sample_token: int = 7) -> dict[str, int]:
    """Apply a schedule as the engine would: mark tokens computed, append one token when caught up."""
    out = sched.schedule()
    for seq, n in zip(out.seqs, out.num_new_tokens):
        seq.num_computed_tokens += n
        sched.block_manager.cache_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(sample_token)
    return {seq.request.request_id: n for seq, n in zip(out.seqs, out.num_new_tokens)}


def test_max_num_seqs_and_token_budget_bound_a_step():
    sched = make_scheduler(max_num_seqs=2, max_num_batched_tokens=16)
    for i in range(3):
        add(sched, 5, i)
    assert run_step(sched) == {"r0": 5, "r1": 5}
    assert len(sched.waiting) == 1
    assert run_step(sched) == {"r0": 1, "r1": 1}


def test_chunked_prefill_splits_long_prompt_and_keeps_decodes_running():
    sched = make_scheduler(max_num_batched_tokens=8)
    add(sched, 3, 0)
    assert run_step(sched) == {"r0": 3}
    long = add(sched, 20, 1)
    steps = [run_step(sched) for _ in range(3)]
    assert steps == [{"r0": 1, "r1": 7}, {"r0": 1, "r1": 7}, {"r0": 1, "r1": 6}]
    assert long.num_computed_tokens == 20 and long.num_output_tokens == 1


def test_prefill_reserves_budget_for_later_decodes():
    sched = make_scheduler(max_num_batched_tokens=8)
    late = Request("r1", None, [1, 2], SamplingParams(), 1, None).seqs[0]
    sched.add(late)
    assert run_step(sched) == {"r1": 2}
    early = add(sched, 30, 0)  # arrived first (order 0), so it runs ahead of r1 once admitted
    assert run_step(sched) == {"r1": 1, "r0": 7}
    assert [s.request.request_id for s in sched.running] == ["r0", "r1"]
    assert run_step(sched) == {"r0": 7, "r1": 1}  # the chunk leaves one token for the decode behind it
    assert early.num_computed_tokens == 14


def test_without_chunked_prefill_a_prompt_waits_for_room():
    sched = make_scheduler(max_num_batched_tokens=8, chunked=False)
    add(sched, 3, 0)
    add(sched, 6, 1)
    assert run_step(sched) == {"r0": 3}
    assert run_step(sched) == {"r0": 1, "r1": 6}


def test_preemption_frees_latest_arrival_and_it_resumes_first():
    sched = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=32)
    a = add(sched, 8, 0)
    b = add(sched, 8, 1)
    run_step(sched)  # both prefilled: 2 blocks each, all 4 used
    assert sched.block_manager.num_free_blocks == 0
    out = sched.schedule()  # a's 9th token needs a third block -> b is preempted
    assert out.preempted == [b] and out.seqs == [a]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and sched.waiting[0] is b
    assert sched.num_preemptions == 1
    sched.finish(a, "stop")
    out = sched.schedule()
    # recomputed from its tokens; its head block survived in the prefix cache (a took its tail block)
    assert out.seqs == [b] and out.num_new_tokens == [b.num_tokens - 4] and b.num_computed_tokens == 4


def test_no_request_starves_under_constant_load():
    sched = make_scheduler(num_blocks=12, block_size=4, max_num_seqs=2, max_num_batched_tokens=8)
    seqs = [add(sched, 6, i) for i in range(6)]
    done = []
    for _ in range(200):
        run_step(sched)
        for seq in list(sched.running):
            if seq.num_output_tokens >= 3:
                sched.finish(seq, "length")
                done.append(seq.request.request_id)
        if not sched.has_unfinished():
            break
    assert done == [s.request.request_id for s in seqs]  # FIFO completion: nobody overtaken forever
    assert sched.block_manager.num_free_blocks == 12
