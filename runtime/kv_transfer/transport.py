"""KV transports: how a prefill replica hands a request's packed KV to a decode replica.

Ray Serve LLM moves KV only between GPUs, through vLLM's NIXL connector. Here the package is a
picklable bundle of numpy arrays, so the Ray object store carries it on any hardware (zero-copy
reads on the same node). `KVTransport` is the seam where NCCL or NIXL transports would plug in.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import ray


@dataclass(kw_only=True, slots=True)
class KVHandle:
    """What travels with the prefill response: small and picklable; the KV itself stays put."""

    transport: str
    request_id: str
    kv_bytes: int
    created_at_s: float = field(default_factory=time.time)
    put_s: float = 0.0  # sender-side cost of publishing the package
    payload: Any = None  # transport-specific: an ObjectRef for the object store


@dataclass(kw_only=True, slots=True)
class TransferStats:
    """One consumed transfer, for metrics: bytes moved and seconds from send to landing."""

    kv_bytes: int
    put_s: float
    pull_s: float
    handoff_s: float


class KVTransport(ABC):
    """Send on the prefill side; receive then release on the decode side."""

    name: ClassVar[str]

    @abstractmethod
    def send(self, request_id: str, package: Any) -> KVHandle:
        """Publish a package; the caller keeps no other reference to it."""

    @abstractmethod
    async def receive(self, handle: KVHandle) -> tuple[Any, TransferStats]:
        """Fetch the package a handle points to (waits while the in-flight bound is reached)."""

    @abstractmethod
    def release(self, handle: KVHandle) -> None:
        """Free the transported copy; call once the package is in the decode cache (or abandoned)."""

    @abstractmethod
    def sweep(self, max_age_s: float) -> int:
        """Release every package received more than `max_age_s` ago and still live; returns how many."""


@dataclass(kw_only=True, slots=True)
class ObjectStoreTransportConfig:
    max_inflight_transfers: int = 8

    def __post_init__(self) -> None:
        if self.max_inflight_transfers < 1:
            raise ValueError(
                f"kv_transfer.max_inflight_transfers must be >= 1, got {self.max_inflight_transfers}"
            )


class ObjectStoreTransport(KVTransport):
    """The Ray object store as KV transport.

    send() does `ray.put`; the prefill replica owns the object and the handle carries the ref to the
    decode replica, which becomes a borrower. release() drops the decode side's last reference, so
    the object is deleted as soon as the KV has been copied into the paged cache; numpy arrays read
    on the same node are zero-copy views of the store's shared memory until then.
    """

    name = "object_store"

    def __init__(self, config: ObjectStoreTransportConfig | None = None):
        self.config = config or ObjectStoreTransportConfig()
        self._inflight = asyncio.Semaphore(self.config.max_inflight_transfers)
        self._live: dict[str, tuple[KVHandle, float]] = {}  # key -> (handle, monotonic time received)

    @property
    def num_live_handles(self) -> int:
        """Received but not yet released packages (0 when all KV objects are freed)."""
        return len(self._live)

    def send(self, request_id: str, package: Any) -> KVHandle:
        kv_bytes = int(getattr(package, "nbytes", 0))
        start = time.perf_counter()
        payload = ray.put(package)
        return KVHandle(
            transport=self.name, request_id=request_id, kv_bytes=kv_bytes, payload=payload,
            put_s=time.perf_counter() - start,
        )

    async def receive(self, handle: KVHandle) -> tuple[Any, TransferStats]:
        if handle.transport != self.name:
            raise ValueError(f"handle.transport must be {self.name!r}, got {handle.transport!r}")
        async with self._inflight:
            start = time.perf_counter()
            package = await handle.payload
            pull_s = time.perf_counter() - start
        self._live[self._key(handle)] = (handle, time.monotonic())
        stats = TransferStats(
            kv_bytes=handle.kv_bytes, put_s=handle.put_s, pull_s=pull_s, handoff_s=max(0.0, time.time() - handle.created_at_s)
        )
        return package, stats

    def release(self, handle: KVHandle) -> None:
        # Ray 2.60 has no public "free": dropping the last borrower's ref tells the owner (the prefill
        # replica, which kept none) to delete the object at once.
        self._live.pop(self._key(handle), None)
        handle.payload = None

    def sweep(self, max_age_s: float) -> int:
        cutoff = time.monotonic() - max_age_s
        stale = [handle for handle, received_s in self._live.values() if received_s < cutoff]
        for handle in stale:
            self.release(handle)
        return len(stale)

    @staticmethod
    def _key(handle: KVHandle) -> str:
        return f"{handle.request_id}:{id(handle)}"


_TRANSPORTS: dict[str, type[KVTransport]] = {ObjectStoreTransport.name: ObjectStoreTransport}


def make_transport(name: str = "object_store", **config: Any) -> KVTransport:
    """Build a transport by name ("object_store"; NCCL/NIXL transports register here when written)."""
    if name not in _TRANSPORTS:
        raise ValueError(f"kv_transfer.transport must be one of {sorted(_TRANSPORTS)}, got {name!r}")
    if name == ObjectStoreTransport.name:
        return ObjectStoreTransport(ObjectStoreTransportConfig(**config))
    return _TRANSPORTS[name]()

