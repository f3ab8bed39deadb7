"""run_elastic on the plain single-node cluster (no role labels, no faults): it trains to the end."""

import pytest

from runtime.chaos.toy_train import toy_train_loop
from runtime.elastic import ElasticConfig, run_elastic


@pytest.mark.slow
def test_run_elastic_trains_to_the_end_on_an_unlabelled_cluster(ray_local, tmp_path):
    config = ElasticConfig(min_workers=1, max_workers=2, resources_per_worker={"CPU": 1},
                           checkpoint_dir=str(tmp_path / "run"), nvml_backend="none")
    loop_config = {"checkpoint_dir": str(tmp_path / "toy"), "max_steps": 30, "step_sleep_s": 0.02}
    result = run_elastic(toy_train_loop, loop_config, config)
    assert result.finished and not result.stopped and result.faults == []
    assert result.final_step == 30 and len(result.worker_nodes_history[0]) == 2
    losses = [loss for _, _, loss in result.loss_history]
    assert losses[-1] < losses[0]
