"""Who acts in a rollout: the scripted expert, a policy checkpoint loaded in process, or a deployed
policy reached through its Ray Serve handle. All map a batch of states (and clouds) to actions."""

from __future__ import annotations

import numpy as np

from runtime.robot.sim.expert import ScriptedExpert


class ExpertDriver:
    needs_pointcloud = False
    version = "expert"

    def __init__(self, expert: ScriptedExpert | None = None):
        self.expert = expert or ScriptedExpert()

    def act(self, states: np.ndarray, clouds: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self.expert.act(state) for state in states])


class CheckpointDriver:
    """A safetensors policy in this process (tests, and evaluation without Serve)."""

    def __init__(self, checkpoint: str):
        import torch

        from runtime.robot.policy import load_policy

        self._torch = torch
        self.model, info = load_policy(checkpoint)
        self.version = info.version
        self.needs_pointcloud = info.config.kind == "pointnet"

    def act(self, states: np.ndarray, clouds: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            state = torch.as_tensor(np.asarray(states, np.float32))
            points = None if clouds is None else torch.as_tensor(np.asarray(clouds, np.float32))
            return self.model(state, points).numpy()


class ServeDriver:
    """The deployed policy: one handle call per environment, so Serve batches across all sim workers."""

    def __init__(self, app_name: str):
        from ray import serve

        self.handle = serve.get_app_handle(app_name)
        info = self.handle.info.remote().result()
        self.version = info["version"]
        self.needs_pointcloud = bool(info["needs_pointcloud"])
        self.versions_seen: set[str] = set()

    def act(self, states: np.ndarray, clouds: np.ndarray | None = None) -> np.ndarray:
        responses = []
        for index, state in enumerate(states):
            observation = {"state": np.asarray(state, np.float32).tolist()}
            if clouds is not None:
                observation["pointcloud"] = np.asarray(clouds[index], np.float32).ravel().tolist()
            responses.append(self.handle.act.remote(observation))
        actions = []
        for response in responses:
            result = response.result()
            self.versions_seen.add(result["version"])
            actions.append(result["action"])
        return np.asarray(actions, np.float32)


def make_driver(spec: dict):
    """{"kind": "expert"} | {"kind": "checkpoint", "path": ...} | {"kind": "serve", "app_name": ...}."""
    kind = spec.get("kind")
    if kind == "expert":
        return ExpertDriver()
    if kind == "checkpoint":
        return CheckpointDriver(spec["path"])
    if kind == "serve":
        return ServeDriver(spec["app_name"])
    raise ValueError(f"driver.kind must be 'expert', 'checkpoint' or 'serve', got {kind!r}")
