"""An offline text corpus and the token stream built from it.

The corpus is the Python standard library's own sources (code plus docstrings), present on every
machine that runs this package, so training never downloads data. `prepare_data` trains the BPE
tokenizer on it, tokenizes it once into `tokens.npy`, and caches both in a data directory keyed by
the settings; workers memory-map the array. `TokenBatches` maps a step to its samples, so the data
position of a run is just its step (resumable on any number of workers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sysconfig
from dataclasses import asdict, dataclass

import numpy as np

from train_apps.lm.tokenizer import BOS_TOKEN, EOS_TOKEN, train_tokenizer

logger = logging.getLogger(__name__)

# Test suites and vendored/generated code read poorly and would dominate a small corpus.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__",
              "ensurepip", "turtledemo", "pydoc_data", "encodings", "config-3.11-x86_64-linux-gnu"}


@dataclass(kw_only=True, slots=True)
class CorpusConfig:
    """Which text to train on and how to tokenize it."""

    source_dir: str | None = None  # None = the running Python's standard library
    max_corpus_bytes: int = 8_000_000
    vocab_size: int = 4096
    max_file_bytes: int = 200_000

    def __post_init__(self) -> None:
        if self.max_corpus_bytes <= 0:
            raise ValueError(f"corpus.max_corpus_bytes must be > 0, got {self.max_corpus_bytes}")
        if self.vocab_size < 300:
            raise ValueError(f"corpus.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}")


def corpus_documents(config: CorpusConfig) -> list[str]:
    """Source files of the corpus as documents, in a stable order, up to max_corpus_bytes in total."""
    root = config.source_dir or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise ValueError(f"corpus.source_dir {root!r} is not a directory")
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(name for name in subdirs if name not in _SKIP_DIRS and not name.startswith("."))
        paths.extend(os.path.join(directory, name) for name in sorted(files)
                     if name.endswith((".py", ".txt", ".md", ".rst")))
    documents, total = [], 0
    for path in paths:
        if os.path.getsize(path) > config.max_file_bytes:
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
        if not text:
            continue
        documents.append(text)
        total += len(text)
        if total >= config.max_corpus_bytes:
            break
    if not documents:
        raise ValueError(f"corpus.source_dir {root!r} holds no .py/.txt/.md/.rst text")
    return documents


def _cache_key(config: CorpusConfig) -> str:
    return hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:10]


def prepare_data(config: CorpusConfig, cache_root: str) -> str:
    """Train the tokenizer and tokenize the corpus (cached); return the data dir workers read.

    The data dir holds `tokenizer.json` and `tokens.npy` (uint16/uint32: <|bos|> doc <|eos|> ...).
    """
    data_dir = os.path.join(cache_root, f"lm_data_{_cache_key(config)}")
    tokens_path = os.path.join(data_dir, "tokens.npy")
    if os.path.exists(tokens_path):
        return data_dir
    documents = corpus_documents(config)
    tokenizer = train_tokenizer(documents, vocab_size=config.vocab_size)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    # The tokenizer's post-processor prepends <|bos|>; documents end with <|eos|>.
    encoded = tokenizer.encode_batch(documents)
    ids = [token_id for encoding in encoded for token_id in (*encoding.ids, eos_id)]
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.uint32
    tokens = np.asarray(ids, dtype=dtype)
    assert tokens[0] == tokenizer.token_to_id(BOS_TOKEN)
    tmp_dir = f"{data_dir}.tmp{os.getpid()}"
    os.makedirs(tmp_dir, exist_ok=True)
    tokenizer.save(os.path.join(tmp_dir, "tokenizer.json"))
    np.save(os.path.join(tmp_dir, "tokens.npy"), tokens)
    with open(os.path.join(tmp_dir, "corpus.json"), "w") as handle:
        json.dump({**asdict(config), "num_documents": len(documents), "num_tokens": int(tokens.size),
                   "num_chars": sum(len(doc) for doc in documents)}, handle, indent=1)
    if os.path.exists(data_dir):  # another process prepared the same data meanwhile
        shutil.rmtree(tmp_dir)
    else:
        os.replace(tmp_dir, data_dir)
    logger.info("corpus: %d documents, %d tokens -> %s", len(documents), tokens.size, data_dir)
    return data_dir


class TokenBatches:
    """Fixed-length samples from the token stream; step -> the rows of each rank, deterministically.

    Samples are non-overlapping windows of seq_len + 1 tokens, visited in a seeded permutation per
    epoch. Step s uses global samples [s * global_batch_size, (s + 1) * global_batch_size) and rank r
    of world_size gets its contiguous share, so a run resumed at step s on any world size that divides
    the global batch sees exactly the data it would have seen.
    """

    def __init__(self, data_dir: str, seq_len: int, seed: int = 0) -> None:
        self.tokens = np.load(os.path.join(data_dir, "tokens.npy"), mmap_mode="r")
        self.seq_len = seq_len
        self.seed = seed
        self.num_samples = (len(self.tokens) - 1) // seq_len
        if self.num_samples < 1:
            raise ValueError(f"corpus has {len(self.tokens)} tokens, fewer than seq_len + 1 ({seq_len + 1})")
        self._epoch = -1
        self._order: np.ndarray | None = None

    def _sample_index(self, global_index: int) -> int:
        epoch, position = divmod(global_index, self.num_samples)
        if epoch != self._epoch:
            self._order = np.random.default_rng(self.seed + epoch).permutation(self.num_samples)
            self._epoch = epoch
        return int(self._order[position])

    def batch(self, step: int, global_batch_size: int, rank: int, world_size: int) -> np.ndarray:
        """int64 array [global_batch_size // world_size, seq_len + 1] for this rank at this step."""
        if global_batch_size % world_size:
            raise ValueError(
                f"train.global_batch_size ({global_batch_size}) must be divisible by the number of "
                f"workers ({world_size})"
            )
        per_rank = global_batch_size // world_size
        first = step * global_batch_size + rank * per_rank
        rows = []
        for global_index in range(first, first + per_rank):
            start = self._sample_index(global_index) * self.seq_len
            rows.append(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
        return np.stack(rows)
