"""Policy models and safetensors checkpoints: shapes, normalization, round trip, config errors, learning."""

from __future__ import annotations

import pytest
import torch
from helpers.tolerances import rounding_tolerance

from runtime.robot.policy import PolicyConfig, build_policy, load_policy, read_policy_info, save_policy


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="policy.kind"):
        PolicyConfig(kind="transformer")
    with pytest.raises(ValueError, match="policy.state_indices"):
        PolicyConfig(state_indices=(0, 99))


@pytest.mark.parametrize("kind", ["state_mlp", "pointnet"])
def test_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    model = build_policy(PolicyConfig(kind=kind, num_points=16))
    model.fit_normalization(torch.randn(100, 28) * 3 + 1, torch.randn(100, 16, 3))
    path = save_policy(model, tmp_path, version="v7", metadata={"train_loss": 0.5})
    assert path.name == "policy.safetensors"
    restored, info = load_policy(tmp_path)
    assert info.version == "v7" and info.metadata["train_loss"] == 0.5 and info.config.kind == kind
    assert read_policy_info(path).config == model.config
    state, points = torch.randn(4, 28), torch.randn(4, 16, 3)
    out = model.eval()(state, points)
    assert out.shape == (4, 4) and out.abs().max() <= 1
    torch.testing.assert_close(restored(state, points), out, rtol=0, atol=0)  # same weights, same ops: bit-identical


def test_pointnet_needs_points_and_is_permutation_invariant():
    model = build_policy(PolicyConfig(kind="pointnet", num_points=8)).eval()
    state, points = torch.randn(2, 28), torch.randn(2, 8, 3)
    with pytest.raises(ValueError, match="pointcloud"):
        model(state)
    # max-pooling is exact; the shared per-point MLP may see its rows in other GEMM blocks: at most the
    # roundings along the path (one per term of every dot product, sum of in_features + 1 over the
    # linears) at the output's scale (tanh: <= 1)
    path = sum(layer.in_features + 1 for layer in model.modules() if isinstance(layer, torch.nn.Linear))
    torch.testing.assert_close(model(state, points), model(state, points[:, torch.randperm(8)]), rtol=0,
                               atol=rounding_tolerance(torch.float32, 1.0, path))


def test_state_mlp_learns_a_state_dependent_action():
    torch.manual_seed(0)
    model = build_policy(PolicyConfig(hidden_sizes=(64, 64)))
    states = torch.randn(512, 28)
    targets = torch.tanh(states[:, [0, 3, 6, 25]] - states[:, [26, 27, 1, 2]])
    model.fit_normalization(states)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(states), targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10
