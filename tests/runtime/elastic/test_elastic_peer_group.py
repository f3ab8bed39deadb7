"""The Rendezvous of in-place recovery: epochs form without dead ranks, a new group forgets them, and a
replacement that arrives after the run finished is released instead of waiting for peers that left."""

import pytest
import ray

from runtime.elastic.peer_group import PeerGroup, Rendezvous, RunFinished


def _pending(ref) -> bool:
    ready, _ = ray.wait([ref], timeout=0.5)
    return not ready


def test_epoch_forms_without_dead_ranks_and_a_reset_forgets_them(ray_local):
    rendezvous = Rendezvous.remote()
    ray.get(rendezvous.mark_dead.remote(1))
    assert ray.get(rendezvous.join.remote(0, 2, 5, 100), timeout=10) == (0, {0: 5})

    ray.get(rendezvous.reset.remote())  # a new worker group: rank 1 is alive again
    first = rendezvous.join.remote(0, 2, 6, 100)
    assert _pending(first)
    second = rendezvous.join.remote(1, 2, 6, 101)
    assert ray.get([first, second], timeout=10) == [(1, {0: 6, 1: 6})] * 2
    ray.kill(rendezvous)


def test_a_replacement_arriving_after_the_run_finished_is_released(ray_local):
    rendezvous = Rendezvous.remote()
    waiting = rendezvous.join.remote(1, 2, -1, 200)  # rank 0 will never come: it finished
    assert _pending(waiting)
    ray.get(rendezvous.finish.remote())
    assert ray.get(waiting, timeout=10) == (-1, {})
    with pytest.raises(RunFinished, match="finished training"):
        PeerGroup(rendezvous, rank=1, world_size=2, timeout_s=10).form(step=0, state=None)
    ray.kill(rendezvous)
