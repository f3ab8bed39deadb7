"""Move a request's packed KV from a prefill replica to a decode replica (object store first)."""

from runtime.kv_transfer.store_stats import object_store_used_bytes
from runtime.kv_transfer.transport import (
    KVHandle,
    KVTransport,
    ObjectStoreTransport,
    ObjectStoreTransportConfig,
    TransferStats,
    make_transport,
)

__all__ = [
    "KVHandle",
    "KVTransport",
    "ObjectStoreTransport",
    "ObjectStoreTransportConfig",
    "TransferStats",
    "make_transport",
    "object_store_used_bytes",
]
