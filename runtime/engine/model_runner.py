"""ModelRunner: owns the model and the paged KV cache; turns a scheduled batch into logits.

Per step it builds the flattened inputs (decodes first, then prefill chunks), one slot mapping and
the attention metadata once, then runs the model's forward. The KV cache size comes from a memory
budget (`kv_cache_memory_bytes`, or a share of free memory).
"""

from __future__ import annotations

import warnings

import psutil
import torch

from runtime.engine.config import EngineConfig
from runtime.engine.device import configure_threads, resolve_device, resolve_dtype
from runtime.engine.layers import paged_decode
from runtime.engine.layers.attention import AttentionMetadata, DecodeGroup, PagedKVCache, PrefillChunk
from runtime.engine.loader import load_model, read_hf_config
from runtime.engine.sequence import Sequence

CPU_KV_CACHE_MAX_BYTES = 2 << 30
CPU_KV_CACHE_MEMORY_FRACTION = 0.2
GPU_ACTIVATION_RESERVE_BYTES = 1 << 30
DECODE_GROUP_SIZE = 16  # decodes per batched attention call (sorted by length: little padding)


class ModelRunner:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.num_threads = configure_threads(config.num_threads) if self.device.type == "cpu" else None
        hf_config = read_hf_config(config.model)
        self.dtype = resolve_dtype(config.dtype, self.device, hf_config)
        max_len = config.max_model_len or hf_config.get("max_position_embeddings", 2048)
        self.model, self.hf_config, self.fingerprint = load_model(
            config.model, dtype=self.dtype, device=self.device, max_position=max_len,
            quantization=config.quantization)
        args = self.model.args
        if args.sliding_window and args.sliding_window < max_len:
            warnings.warn(f"max_model_len capped from {max_len} to the sliding window {args.sliding_window} "
                          "(windowed attention is not implemented)", stacklevel=2)
            max_len = args.sliding_window
        self.block_size = config.block_size
        num_blocks = self._num_kvcache_blocks(max_len)
        if num_blocks * self.block_size < max_len:
            warnings.warn(f"max_model_len capped from {max_len} to {num_blocks * self.block_size}: "
                          "the KV cache holds no more", stacklevel=2)
            max_len = num_blocks * self.block_size
        self.max_model_len = max_len
        self.kv_cache = PagedKVCache(
            num_layers=args.num_layers, num_blocks=num_blocks, block_size=self.block_size,
            num_kv_heads=args.num_kv_heads, head_dim=args.head_dim, dtype=self.dtype, device=self.device,
            int8=config.kv_cache_dtype == "int8")
        # Batched decodes attend in one compiled kernel reading the cache in place (CPU, fp32 cache);
        # compiled (or loaded from numba's disk cache) now, so no request pays for it.
        self.paged_decode_kernel = paged_decode.available(self.kv_cache)
        if self.paged_decode_kernel:
            paged_decode.warm_up(self.kv_cache)

    def _bytes_per_block(self, int8: bool) -> int:
        a = self.model.args
        return PagedKVCache.bytes_per_block(num_layers=a.num_layers, block_size=self.block_size,
                                            num_kv_heads=a.num_kv_heads, head_dim=a.head_dim,
                                            dtype=self.dtype, int8=int8)

    def _num_kvcache_blocks(self, max_len: int) -> int:
        if self.config.num_kvcache_blocks is not None:
            return self.config.num_kvcache_blocks
        block_bytes = self._bytes_per_block(self.config.kv_cache_dtype == "int8")
        budget = self.config.kv_cache_memory_bytes
        if budget is None:
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                budget = int(total * self.config.gpu_memory_utilization) - (total - free)
                budget -= GPU_ACTIVATION_RESERVE_BYTES
            else:
                budget = min(CPU_KV_CACHE_MAX_BYTES,
                             int(psutil.virtual_memory().available * CPU_KV_CACHE_MEMORY_FRACTION))
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory_bytes ({budget}) holds no KV block of {block_bytes} bytes")
        # More blocks than every sequence at full length can use only feed the prefix cache; cap there.
        max_useful = self.config.max_num_seqs * (-(-max_len // self.block_size)) + 1
        return int(min(num_blocks, max_useful))

    def memory_report(self) -> dict:
        model = self.model
        linear_bytes = sum(getattr(owner, name).weight_bytes for owner, name in model.linear_layers())
        dense_elements = 0
        for owner, name in model.linear_layers():
            layer = getattr(owner, name)
            weight = getattr(layer, "weight", None)
            dense_elements += (weight if weight is not None else layer.qweight).numel()
        dense_bytes = dense_elements * self.dtype.itemsize
        # int8 layers share one transient bf16 dequantization buffer per thread (see Int8Linear)
        scratch_bytes = max((getattr(getattr(owner, name), "scratch_bytes", 0) for owner, name in model.linear_layers()),
                            default=0)
        kv_block_bytes = self._bytes_per_block(self.kv_cache.int8)
        kv_dense_block_bytes = self._bytes_per_block(False)
        return {
            "linear_weight_bytes": linear_bytes,
            "linear_weight_bytes_unquantized": dense_bytes,
            "linear_weight_saving": 1.0 - linear_bytes / dense_bytes,
            "int8_scratch_bytes": scratch_bytes,
            "kv_cache_bytes": self.kv_cache.nbytes,
            "kv_bytes_per_token": kv_block_bytes // self.block_size,
            "kv_cache_saving": 1.0 - kv_block_bytes / kv_dense_block_bytes,
        }

    @torch.inference_mode()
    def execute(self, seqs: list[Sequence], num_new_tokens: list[int]) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step; returns logits [S, vocab] for the S sequences that sample a token now."""
        bs = self.block_size
        for seq in seqs:
            if seq.pending_kv is not None:
                k, v = seq.pending_kv.kv_tensors()
                self.kv_cache.write_tokens(seq.block_table, k, v)
                seq.pending_kv = None
        # Decodes sorted by context length and cut into groups, so batched attention pads little.
        decodes = sorted((i for i, n in enumerate(num_new_tokens) if n == 1), key=lambda i: seqs[i].num_computed_tokens)
        prefills = [i for i, n in enumerate(num_new_tokens) if n > 1]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        for i in decodes:
            seq = seqs[i]
            pos = seq.num_computed_tokens
            input_ids.append(seq.token_ids[pos])
            positions.append(pos)
            slots.append(seq.block_table[pos // bs] * bs + pos % bs)
            if pos + 1 == seq.num_tokens:
                sample_rows.append(len(input_ids) - 1)
                sample_seqs.append(seq)
        device = self.device
        meta = AttentionMetadata(slot_mapping=None, num_decodes=len(decodes))
        in_place = self.paged_decode_kernel  # one kernel call for all decodes: ragged lengths, no padding
        group_size = max(len(decodes), 1) if in_place else DECODE_GROUP_SIZE
        for start in range(0, len(decodes), group_size):
            group = [seqs[i] for i in decodes[start:start + group_size]]
            context_lens = [seq.num_computed_tokens + 1 for seq in group]
            kv_len = context_lens[-1]
            num_table_blocks = -(-kv_len // bs)
            tables = [seq.block_table[:num_table_blocks] for seq in group]
            tables = [t + [0] * (num_table_blocks - len(t)) for t in tables]
            block_tables = torch.tensor(tables, dtype=torch.long, device=device)
            if in_place:
                meta.decode_groups.append(DecodeGroup(
                    start=start, end=start + len(group), kv_len=kv_len, block_tables=block_tables,
                    context_lens=torch.tensor(context_lens, dtype=torch.long, device=device)))
                continue
            mask = None
            if context_lens[0] != kv_len:
                lens = torch.tensor(context_lens, device=device)
                mask = (torch.arange(kv_len, device=device)[None, :] >= lens[:, None])[None, :, None, :]
            meta.decode_groups.append(DecodeGroup(start=start, end=start + len(group), kv_len=kv_len, mask=mask,
                                                  block_tables=block_tables))
        for i in prefills:
            seq, n = seqs[i], num_new_tokens[i]
            start_pos = seq.num_computed_tokens
            end_pos = start_pos + n
            row = len(input_ids)
            input_ids.extend(seq.token_ids[start_pos:end_pos])
            positions.extend(range(start_pos, end_pos))
            slots.extend(seq.block_table[p // bs] * bs + p % bs for p in range(start_pos, end_pos))
            chunk = PrefillChunk(start=row, end=row + n, num_cached=start_pos)
            if start_pos:
                chunk.block_table = torch.tensor(seq.block_table[:-(-end_pos // bs)], dtype=torch.long,
                                                 device=device)
                chunk.mask = torch.ones(n, end_pos, dtype=torch.bool, device=device).tril(start_pos)
            meta.prefills.append(chunk)
            if end_pos == seq.num_tokens:
                sample_rows.append(row + n - 1)
                sample_seqs.append(seq)
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long, device=device)
        ids = torch.tensor(input_ids, dtype=torch.long, device=device)
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        rows = None if len(sample_rows) == len(input_ids) else torch.tensor(sample_rows, device=device)
        if not sample_rows:
            rows = torch.tensor([len(input_ids) - 1], device=device)  # keep the forward uniform; unused
        logits = self.model.forward(ids, pos, meta, self.kv_cache, rows)
        return logits[:len(sample_seqs)], sample_seqs

    def read_kv(self, seq: Sequence, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv_cache.read_tokens(seq.block_table, num_tokens)
