"""Object-store usage of the whole cluster, to prove KV objects are freed once consumed."""

from __future__ import annotations

import ray


def object_store_used_bytes() -> int:
    """Bytes held in the object stores of all nodes right now (asks one raylet for the global view)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)
