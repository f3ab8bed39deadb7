"""Success/failure of an episode, from the recorded flag, the reward, or a classifier model.

A model (TorchScript, mapping the final observation.state to a logit) is loaded once per actor,
which is why this stage runs in an actor pool (`concurrency=`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from runtime.robot import schema as S

RULES = ("auto", "flag", "reward", "model")
RULE_VERSION = "1"


class SuccessLabeler:
    """Adds an episode-scope `success` label (bool) to every frame of each episode in a batch."""

    def __init__(self, rule: str = "auto", reward_threshold: float = 0.5, model_path: str | None = None):
        if rule not in RULES:
            raise ValueError(f"success.rule must be one of {RULES}, got {rule!r}")
        if (rule == "model") != (model_path is not None):
            raise ValueError("success.model_path is required with rule='model' and only then")
        self.rule = rule
        self.reward_threshold = reward_threshold
        self.model = None
        self.source = f"strata.success.{rule}"
        self.version = RULE_VERSION
        if model_path is not None:
            import torch

            self.model = torch.jit.load(model_path, map_location="cpu").eval()
            self.version = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:12]

    def __call__(self, batch: pa.Table) -> pa.Table:
        episodes = S.episode_tables(batch)
        out = []
        for episode in episodes:
            success = self.episode_success(episode)
            labels = [] if success is None else [
                S.Label(name="success", value=success, source=self.source, version=self.version, scope="episode")
            ]
            out.append(S.with_labels(episode, [labels] * episode.num_rows))
        return pa.concat_tables(out, promote_options="permissive") if out else batch

    def episode_success(self, episode: pa.Table) -> bool | None:
        if self.model is not None:
            import torch

            state = np.asarray(episode.column(S.STATE)[-1].as_py(), dtype=np.float32)
            with torch.no_grad():
                return bool(self.model(torch.from_numpy(state)[None]).reshape(-1)[0] > 0)
        names = episode.column_names
        flags = episode.column(S.SUCCESS) if S.SUCCESS in names else None
        rewards = episode.column(S.REWARD) if S.REWARD in names else None
        if self.rule in ("auto", "flag") and flags is not None and flags.null_count < len(flags):
            return bool(pa.compute.any(flags).as_py())
        if self.rule in ("auto", "reward") and rewards is not None and rewards.null_count < len(rewards):
            return bool(pa.compute.max(rewards).as_py() >= self.reward_threshold)
        if self.rule == "auto":
            return None
        raise ValueError(f"success.rule={self.rule!r} but the episode has no {self.rule} column values")
