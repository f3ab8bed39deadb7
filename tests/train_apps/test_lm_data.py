"""Corpus, tokenizer and data position: deterministic, world-size free, cached."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer

from train_apps.lm.config import LMTrainConfig, tiny_config
from train_apps.lm.corpus import CorpusConfig, TokenBatches, corpus_documents, prepare_data
from train_apps.lm.tokenizer import BOS_TOKEN, EOS_TOKEN, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_data(tiny_config().corpus, str(tmp_path_factory.mktemp("lm_data")))


def test_corpus_is_the_standard_library_and_stable():
    config = CorpusConfig(max_corpus_bytes=100_000, vocab_size=512)
    documents = corpus_documents(config)
    assert documents == corpus_documents(config)
    assert sum(len(doc) for doc in documents) >= 100_000
    assert any("def " in doc for doc in documents)


def test_prepared_data_has_tokenizer_and_document_markers(data_dir):
    tokenizer = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    assert tokenizer.get_vocab_size() <= 512
    for token in SPECIAL_TOKENS:
        assert tokenizer.token_to_id(token) is not None, token
    tokens = np.load(os.path.join(data_dir, "tokens.npy"))
    bos, eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    assert tokens[0] == bos and tokens[-1] == eos
    assert (tokens == bos).sum() == (tokens == eos).sum() == json.load(open(os.path.join(data_dir, "corpus.json")))["num_documents"]
    text = "import os\nprint(os.getcwd())\n"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_prepare_data_is_cached(data_dir, tmp_path):
    root = os.path.dirname(data_dir)
    before = os.path.getmtime(os.path.join(data_dir, "tokens.npy"))
    assert prepare_data(tiny_config().corpus, root) == data_dir
    assert os.path.getmtime(os.path.join(data_dir, "tokens.npy")) == before


def test_ranks_split_the_same_global_batch_for_any_world_size(data_dir):
    batches = TokenBatches(data_dir, seq_len=64, seed=0)
    for step in (0, 7, batches.num_samples):  # the last one wraps into the next epoch
        whole = batches.batch(step, 8, rank=0, world_size=1)
        assert whole.shape == (8, 65)
        for world_size in (2, 4):
            parts = [batches.batch(step, 8, rank=rank, world_size=world_size) for rank in range(world_size)]
            np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(batches.batch(0, 8, 0, 1), batches.batch(1, 8, 0, 1))


def test_indivisible_global_batch_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="global_batch_size"):
        TokenBatches(data_dir, seq_len=64).batch(0, 8, rank=0, world_size=3)


def test_config_round_trips_and_validates():
    config = tiny_config().with_overrides(checkpoint_dir="/tmp/x", zero_stage=3)
    assert LMTrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown train config fields"):
        LMTrainConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="train.zero_stage"):
        tiny_config().with_overrides(zero_stage=4)
    with pytest.raises(ValueError, match="train.seq_len"):
        tiny_config().with_overrides(seq_len=1024)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = tiny_config().with_overrides(lr=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    lrs = [config.lr_at(step) for step in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert config.lr_at(20) == pytest.approx(0.1)
