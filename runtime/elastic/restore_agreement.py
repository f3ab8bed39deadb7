"""Every rank restores the same checkpoint step: rank 0 chooses from what each rank can load, and broadcasts.

Ranks see checkpoints differently: one rank's read of the in-memory replica times out, a disk copy
fails its check on one node only, the replica is newer than storage after a full disk. Each rank
proposes the newest step it can load; rank 0 gathers the proposals and broadcasts the lowest. When
they differ, each rank proposes again, at most that step, until all propose the same one: the newest
step every rank can load (NO_CHECKPOINT everywhere when there is none). Ray Train restores every
rank from the same storage checkpoint but has no in-memory source that could disagree; this is
what the replica adds the need for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NO_CHECKPOINT = -1
DECIDING_RANK = 0  # chooses the step and is the one rank that repairs a disk copy


@dataclass(kw_only=True, slots=True, frozen=True)
class RoundDecision:
    step: int  # the agreed step, or the bound on the next round's proposals
    agreed: bool


def decide_round(proposals: Sequence[int]) -> RoundDecision:
    """The lowest proposal; agreed when every rank proposed it (so every rank can load it)."""
    if not proposals:
        raise ValueError("decide_round: no proposals (a process group has at least one rank)")
    lowest = min(proposals)
    return RoundDecision(step=lowest, agreed=all(proposal == lowest for proposal in proposals))


def is_deciding_rank() -> bool:
    """True on rank 0 of the default process group, and in a process without one."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == DECIDING_RANK


def agree_on_restore_step(propose: Callable[[int | None], int]) -> int:
    """The step every rank restores: a collective, called by every rank of the default process group.

    propose(at_most) returns the newest step this rank can load that is <= at_most (no bound when
    None), or NO_CHECKPOINT. Without a process group (or with one rank) it is asked once.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return propose(None)
    at_most: int | None = None
    num_rounds = 0
    while True:
        num_rounds += 1
        proposal = propose(at_most)
        assert at_most is None or proposal <= at_most, f"proposed step {proposal} above the bound {at_most}"
        proposals = _gather_on_deciding_rank(proposal)
        decision = decide_round(proposals) if proposals is not None else None
        step, agreed = _broadcast_decision(decision)
        if proposals is not None and not agreed:
            logger.warning("checkpoint: ranks propose different steps %s; asking each for at most step %d",
                           dict(enumerate(proposals)), step)
        if agreed:
            if proposals is not None:
                logger.info("checkpoint: every rank restores step %d (agreed in %d round(s))", step, num_rounds)
            return step
        at_most = step


def _device():
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":  # NCCL moves only CUDA tensors
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_on_deciding_rank(proposal: int) -> list[int] | None:
    import torch
    import torch.distributed as dist

    mine = torch.tensor([proposal], dtype=torch.int64, device=_device())
    if dist.get_rank() != DECIDING_RANK:
        dist.gather(mine, dst=DECIDING_RANK)
        return None
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.gather(mine, gather_list=gathered, dst=DECIDING_RANK)
    return [int(tensor.item()) for tensor in gathered]


def _broadcast_decision(decision: RoundDecision | None) -> tuple[int, bool]:
    import torch
    import torch.distributed as dist

    values = [decision.step, int(decision.agreed)] if decision is not None else [0, 0]
    message = torch.tensor(values, dtype=torch.int64, device=_device())
    dist.broadcast(message, src=DECIDING_RANK)
    return int(message[0].item()), bool(message[1].item())
