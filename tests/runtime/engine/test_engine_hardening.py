"""Hardening (#15): tiny temperatures are greedy, the model fingerprint covers every weight byte, prefix-cache
blocks are keyed by a cryptographic hash chain (a crafted collision cannot serve another request's KV)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.block_manager import BlockManager, block_hash
from runtime.engine.loader import checkpoint_files, fingerprint
from runtime.engine.sequence import Request, Sequence

# -- tiny temperatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-40, 1e-6, 9.9e-6])
def test_temperature_below_1e_5_is_greedy(llama_dir, temperature):
    engine = LLMEngine(llama_dir)
    outputs = {}
    for name, t in (("greedy", 0.0), ("tiny", temperature)):
        engine.add_request(name, "The quick brown fox", SamplingParams(temperature=t, max_tokens=12, ignore_eos=True))
    while engine.has_unfinished_requests():
        outputs.update({o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished})
    assert outputs["tiny"] == outputs["greedy"]
    assert set(outputs["tiny"]) != {0}
    assert SamplingParams(temperature=temperature).greedy


@pytest.mark.parametrize("field", ["temperature", "repetition_penalty"])
def test_non_finite_sampling_values_are_refused(field):
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: value})


# -- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_covers_a_byte_in_the_middle_of_the_weights(llama_dir, tmp_path):
    other = str(tmp_path / "flipped")
    shutil.copytree(llama_dir, other)
    path = os.path.join(other, "model.safetensors")
    size = os.path.getsize(path)
    assert size > 4 * (1 << 16), "the checkpoint must be larger than the bytes a sampled hash would read"
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    original = fingerprint(llama_dir, checkpoint_files(llama_dir))
    assert fingerprint(other, checkpoint_files(other)) != original
    assert fingerprint(llama_dir, checkpoint_files(llama_dir)) == original  # deterministic


# -- prefix-cache keys ----------------------------------------------------------------------------


def make_seq(tokens: list[int], order: int = 0) -> Sequence:
    return Request(f"r{order}", None, tokens, SamplingParams(), order, None).seqs[0]


def test_a_python_hash_collision_does_not_serve_another_blocks_kv():
    # hash(2**61 - 1) == hash(0) in CPython (ints hash modulo the Mersenne prime 2**61 - 1), so the tuples of
    # these two different blocks have the same Python hash: keyed by hash(), the second prompt got the first
    # one's KV
    victim, crafted = [0, 1, 2, 3], [2**61 - 1, 1, 2, 3]
    assert hash(tuple(victim)) == hash(tuple(crafted)) and victim != crafted
    bm = BlockManager(num_blocks=8, block_size=4)
    first = make_seq(victim + [9])
    assert bm.allocate(first, bm.find_cached_blocks(first), first.num_tokens)
    first.num_computed_tokens = first.num_tokens
    bm.cache_full_blocks(first)
    assert bm.find_cached_blocks(make_seq(victim + [7], 1)) == first.block_table[:1]  # a true hit still hits
    assert bm.find_cached_blocks(make_seq(crafted + [9], 2)) == []


def test_block_hash_is_sha256_chained_and_stable_across_processes():
    parent = block_hash(None, [1, 2, 3, 4])
    assert isinstance(parent, bytes) and len(parent) == 32
    assert block_hash(parent, [5, 6, 7, 8]) != block_hash(None, [5, 6, 7, 8])  # the chain covers the prefix
    assert block_hash(None, [1, 2, 3, 4]) != block_hash(None, [1, 2, 3, 5])
    code = "from runtime.engine.block_manager import block_hash; print(block_hash(None, [1, 2, 3, 4]).hex())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert out.stdout.strip() == parent.hex()


def test_prefix_cache_hit_rate_is_unchanged_by_the_keying(llama_dir):
    engine = LLMEngine(llama_dir, block_size=4)
    system = "The quick brown fox jumps over the lazy dog. " * 3
    for i, tail in enumerate(["Hello", "Goodbye", "Hello"]):
        engine.add_request(str(i), system + tail, SamplingParams(temperature=0, max_tokens=2))
        while engine.has_unfinished_requests():
            engine.step()
    num_system_blocks = len(engine.tokenizer.encode(system)) // 4
    assert engine.block_manager.num_prefix_hit_tokens >= 2 * num_system_blocks * 4
