"""lm_pretrain's loop under the ElasticSupervisor on the multi-node fixture: a killed worker is a T1,
the run resumes from the last checkpoint and the loss keeps falling."""

from __future__ import annotations

import math

import pytest
import ray

from runtime import chaos
from runtime.chaos.drill import Injection, run_schedule
from runtime.elastic import ElasticConfig, start_supervisor
from runtime.elastic.tiers import T1
from train_apps.lm_pretrain import prepare_run, tiny_config, train_loop_per_worker

pytestmark = [pytest.mark.multinode, pytest.mark.slow]
CHECKPOINT_EVERY = 10


def test_lm_resumes_after_a_killed_worker(multinode_cluster, tmp_path):
    loop_config = prepare_run(tiny_config(), str(tmp_path), max_steps=50, checkpoint_every_steps=CHECKPOINT_EVERY)
    config = ElasticConfig(min_workers=1, max_workers=2, resources_per_worker={"CPU": 1, "fake_gpu": 1},
                           checkpoint_dir=loop_config["checkpoint_dir"], gpu_resource="fake_gpu",
                           nvml_backend="fake", max_restarts=4, name="lm_supervised_test")
    supervisor = start_supervisor(train_loop_per_worker, loop_config, config)
    run = supervisor.run.remote()
    schedule = [Injection(at_step=25, name="kill", inject=lambda: chaos.kill_worker(supervisor, 1), expected_tier=T1)]
    run_schedule(supervisor, schedule, timeout_s=300)
    result = ray.get(run, timeout=400)
    ray.kill(supervisor)

    assert result.finished and not result.stopped and result.final_step == 50, result.report
    killed = [record for record in result.faults if record.fault_class == "process_death"]
    assert killed and killed[0].tier == T1
    restored = killed[0].resumed_step - 1
    assert restored % CHECKPOINT_EVERY == 0 and restored >= CHECKPOINT_EVERY, killed[0]
    losses = [loss for _, _, loss in result.loss_history]
    assert losses[0] > math.log(loss_vocab(loop_config)) - 0.5
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def loss_vocab(loop_config: dict) -> int:
    return loop_config["model"]["vocab_size"]
