"""ObjectStoreTransport between two real actors: zero-copy pull, bounded in-flight, freed on release."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import ray

from runtime.kv_transfer import KVHandle, ObjectStoreTransport, make_transport, object_store_used_bytes

# Workers cannot import test modules; ship this module's classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class Package:
    """Stands in for the engine's KVPackage: numpy arrays plus `.nbytes`."""

    keys: np.ndarray
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@ray.remote(num_cpus=0)
class PrefillSide:
    def __init__(self):
        self.transport = make_transport("object_store")

    def send(self, request_id: str, num_tokens: int) -> dict:
        shape = (2, num_tokens, 4, 16)
        package = Package(keys=np.full(shape, 1.0, np.float32), values=np.full(shape, 2.0, np.float32))
        return {"kv": self.transport.send(request_id, package)}


@ray.remote(num_cpus=0)
class DecodeSide:
    def __init__(self, max_inflight_transfers: int = 8):
        self.transport = make_transport("object_store", max_inflight_transfers=max_inflight_transfers)

    async def pull(self, answer: dict) -> dict:
        handle: KVHandle = answer["kv"]
        package, stats = await self.transport.receive(handle)
        result = {
            "sum": float(package.keys.sum() + package.values.sum()),
            "writeable": bool(package.keys.flags.writeable),
            "kv_bytes": stats.kv_bytes,
            "live_after_receive": self.transport.num_live_handles,
        }
        del package
        self.transport.release(handle)
        result["live_after_release"] = self.transport.num_live_handles
        return result

    async def pull_order(self, slow: dict, fast: dict) -> list[str]:
        done: list[str] = []

        async def one(name: str, answer: dict) -> None:
            package, _ = await self.transport.receive(answer["kv"])
            done.append(name)
            del package
            self.transport.release(answer["kv"])

        first = asyncio.ensure_future(one("slow", slow))
        await asyncio.sleep(0.05)  # the slow pull holds the only slot before the fast one asks
        await asyncio.gather(first, one("fast", fast))
        return done


@ray.remote(num_cpus=0)
def late_package(delay_s: float) -> Package:
    time.sleep(delay_s)
    return Package(keys=np.zeros((4, 4), np.float32), values=np.zeros((4, 4), np.float32))


def _wait_for_store(baseline: int, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    used = object_store_used_bytes()
    while used > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
        used = object_store_used_bytes()
    return used


def test_handoff_is_zero_copy_and_freed(ray_local):
    prefill, decode = PrefillSide.remote(), DecodeSide.remote()
    ray.get([prefill.__ray_ready__.remote(), decode.__ray_ready__.remote()])
    baseline = _wait_for_store(0, timeout_s=5.0)
    answer_ref = prefill.send.remote("req-1", 1024)
    result = ray.get(decode.pull.remote(answer_ref))
    expected_bytes = 2 * (2 * 1024 * 4 * 16 * 4)
    assert result["kv_bytes"] == expected_bytes
    assert result["sum"] == 3.0 * 2 * 1024 * 4 * 16
    assert result["writeable"] is False  # a read-only view of the store's shared memory: no copy
    assert result["live_after_receive"] == 1 and result["live_after_release"] == 0
    del answer_ref
    assert _wait_for_store(baseline) <= baseline


def test_many_handoffs_return_store_to_baseline(ray_local):
    prefill, decode = PrefillSide.remote(), DecodeSide.remote()
    ray.get([prefill.__ray_ready__.remote(), decode.__ray_ready__.remote()])
    baseline = _wait_for_store(0, timeout_s=5.0)
    results = ray.get([decode.pull.remote(prefill.send.remote(f"r{i}", 512)) for i in range(8)])
    assert all(r["live_after_release"] == 0 for r in results)
    assert _wait_for_store(baseline) <= baseline


def test_inflight_transfers_are_bounded(ray_local):
    decode = DecodeSide.remote(max_inflight_transfers=1)
    slow = {"kv": KVHandle(transport="object_store", request_id="slow", kv_bytes=128, payload=late_package.remote(1.0))}
    fast = {"kv": KVHandle(transport="object_store", request_id="fast", kv_bytes=128, payload=ray.put(Package(
        keys=np.zeros(1, np.float32), values=np.zeros(1, np.float32))))}
    # With one slot the ready package must wait behind the slow one.
    assert ray.get(decode.pull_order.remote(slow, fast)) == ["slow", "fast"]
    decode_wide = DecodeSide.remote(max_inflight_transfers=2)
    ray.get(decode_wide.__ray_ready__.remote())  # the slow package must still be in the making when pulled
    slow["kv"].payload = late_package.remote(3.0)
    assert ray.get(decode_wide.pull_order.remote(slow, fast)) == ["fast", "slow"]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_inflight_transfers"):
        make_transport("object_store", max_inflight_transfers=0)
    with pytest.raises(ValueError, match="kv_transfer.transport"):
        make_transport("nixl")
    assert isinstance(make_transport(), ObjectStoreTransport)
