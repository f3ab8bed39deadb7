"""LMTrainConfig and its presets (tiny for tests, default for a few CPU minutes, bench for ~50M).

The config crosses process boundaries as a plain dict (`to_dict` / `from_dict`), because Ray Train
hands `train_loop_config` to every worker and the supervisor logs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from train_apps.lm.corpus import CorpusConfig
from train_apps.lm.model import LlamaConfig


@dataclass(kw_only=True, slots=True)
class LMTrainConfig:
    """Everything one worker needs to train (and resume) the LM."""

    model: LlamaConfig = field(default_factory=LlamaConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seq_len: int = 256
    global_batch_size: int = 16  # fixed across world sizes: the data position is just the step
    max_steps: int = 400
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    zero_stage: int = 2
    checkpoint_dir: str = ""
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 3
    replicate_checkpoints: bool = True
    data_dir: str = ""  # set by prepare_data (tokenizer.json + tokens.npy)
    seed: int = 0
    num_threads_per_worker: int = 1
    use_gpu: bool = False

    def __post_init__(self) -> None:
        positive = ("seq_len", "global_batch_size", "max_steps", "checkpoint_every_steps", "keep_checkpoints",
                    "num_threads_per_worker")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"train.seq_len ({self.seq_len}) must be <= model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LMTrainConfig:
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown train config fields {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("model"), dict):
            values["model"] = LlamaConfig(**values["model"])
        if isinstance(values.get("corpus"), dict):
            values["corpus"] = CorpusConfig(**values["corpus"])
        return cls(**values)

    def with_overrides(self, **overrides) -> LMTrainConfig:
        return replace(self, **overrides)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps (derived from the step,
        so a resumed run needs no scheduler state)."""
        import math

        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


def default_config() -> LMTrainConfig:
    """Trains in a few minutes on 2 CPU cores to a model that writes recognisable Python."""
    return LMTrainConfig(
        model=LlamaConfig(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=256),
        corpus=CorpusConfig(max_corpus_bytes=8_000_000, vocab_size=4096),
        seq_len=256,
        global_batch_size=16,
        max_steps=400,
        lr=3e-3,
        warmup_steps=20,
        checkpoint_every_steps=50,
    )


def tiny_config() -> LMTrainConfig:
    """A few seconds of training per run (tests, supervisor drills): the loss falls within ~30 steps."""
    return LMTrainConfig(
        model=LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64),
        corpus=CorpusConfig(max_corpus_bytes=300_000, vocab_size=512),
        seq_len=64,
        global_batch_size=8,
        max_steps=40,
        lr=5e-3,
        warmup_steps=4,
        checkpoint_every_steps=10,
    )


def bench_config() -> LMTrainConfig:
    """~50M parameters, for benchmarks and GPU nodes."""
    return LMTrainConfig(
        model=LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512),
        corpus=CorpusConfig(max_corpus_bytes=16_000_000, vocab_size=8192),
        seq_len=512,
        global_batch_size=32,
        max_steps=2000,
        lr=1e-3,
        warmup_steps=100,
        checkpoint_every_steps=200,
    )


PRESETS = {"tiny": tiny_config, "default": default_config, "bench": bench_config}
