"""Load a Hugging Face checkpoint directory: config.json + *.safetensors (single or sharded with an
index). Only safetensors; no pickle, no remote code. Every failure names the file and the tensor."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors import safe_open

from runtime.engine.models import DecoderModel, resolve_model_class

INDEX_FILE = "model.safetensors.index.json"
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exporters save; recomputed here
FINGERPRINT_CHUNK_BYTES = 64 << 20


def read_hf_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a model directory needs config.json")
    with open(path) as f:
        return json.load(f)


def checkpoint_files(model_dir: str) -> dict[str, str]:
    """Tensor name -> safetensors file path, from the shard index or from every *.safetensors file."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: no 'weight_map' object")
        files = {}
        for name, filename in weight_map.items():
            path = os.path.join(model_dir, filename)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} (listed in {INDEX_FILE} for tensor {name!r}) not found")
            files[name] = path
        return files
    paths = sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not paths:
        bins = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {bins}: pickle checkpoints are not loaded; convert to safetensors)" if bins else ""
        raise FileNotFoundError(f"{model_dir}: no *.safetensors file{hint}")
    files = {}
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                files[name] = path
    return files


def fingerprint(model_dir: str, files: dict[str, str]) -> str:
    """Identity of config + weights: SHA-256 over config.json and every byte of every weight file.

    A prefill/decode pair compares it before a decode engine continues from a prefill's KV, so it must
    tell apart checkpoints that differ anywhere (a fine-tune can change one tensor in the middle). Files
    are hashed in FINGERPRINT_CHUNK_BYTES pieces on threads (hashlib releases the GIL), then the pieces'
    digests in order."""
    pieces = []
    for path in sorted(set(files.values())):
        size = os.path.getsize(path)
        pieces += [(path, offset, min(FINGERPRINT_CHUNK_BYTES, size - offset))
                   for offset in range(0, size, FINGERPRINT_CHUNK_BYTES)] or [(path, 0, 0)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1, 8))) as pool:
        chunk_digests = list(pool.map(_hash_piece, pieces))
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        digest.update(f.read())
    for (_, offset, length), chunk_digest in zip(pieces, chunk_digests):
        digest.update(f"{offset}:{length}:".encode() + chunk_digest)
    return digest.hexdigest()[:32]


def _hash_piece(piece: tuple[str, int, int]) -> bytes:
    path, offset, length = piece
    digest = hashlib.sha256()
    buffer = bytearray(min(length, 8 << 20) or 1)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            num_read = f.readinto(view[:min(length, len(buffer))])
            if not num_read:
                raise ValueError(f"{path}: file shrank while its fingerprint was taken")
            digest.update(view[:num_read])
            length -= num_read
    return digest.digest()


def load_model(model_dir: str, *, dtype: torch.dtype, device: torch.device, max_position: int,
               quantization: str | None) -> tuple[DecoderModel, dict, str]:
    hf_config = read_hf_config(model_dir)
    model_cls = resolve_model_class(hf_config, os.path.join(model_dir, "config.json"))
    args = model_cls.args_from_config(hf_config)
    model = model_cls(args, dtype=dtype, device=device, max_position=max_position)
    files = checkpoint_files(model_dir)
    targets = model.checkpoint_tensors()
    missing = [name for name in targets if name not in files]
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks tensor {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    # Hashing every weight byte costs about as much as reading them: run it beside the load, off the GIL.
    with ThreadPoolExecutor(max_workers=1) as background:
        pending_fingerprint = background.submit(fingerprint, model_dir, files)
        _copy_weights(model, files, targets)
        model.quantize(quantization)
        model.pack_weights()
        return model, hf_config, pending_fingerprint.result()


def _copy_weights(model: DecoderModel, files: dict[str, str], targets: dict[str, torch.Tensor]) -> None:
    by_file: dict[str, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in sorted(by_file.items()):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in names:
                target = targets.get(name)
                if target is None:
                    if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.args.tie_word_embeddings):
                        continue
                    raise ValueError(f"{path}: unexpected tensor {name!r} for {type(model).__name__}")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(target.shape)} from config.json")
                target.copy_(tensor)
