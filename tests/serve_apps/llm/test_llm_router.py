"""Prefix table and KV routing decisions (pure logic; the Serve integration is tested end to end)."""

from __future__ import annotations

from serve_apps.llm.router import PrefixTable, block_hashes


def test_block_hashes_chain_prefixes():
    a = block_hashes(list(range(40)), 16)
    b = block_hashes(list(range(32)) + [99] * 8, 16)
    c = block_hashes([7] + list(range(1, 40)), 16)
    assert len(a) == 2 and a == b  # only full blocks count, and equal prefixes hash equal
    assert c[0] != a[0] and c[1] != a[1]  # a change in block 0 changes every later hash


def test_prefix_table_longest_match_and_eviction():
    table = PrefixTable(max_entries=4)
    shared = block_hashes(list(range(48)), 16)
    table.insert(shared, "replica-a")
    other = block_hashes(list(range(32)) + [5] * 16, 16)
    table.insert(other[2:], "replica-b")
    assert table.longest_match(other, {"replica-a", "replica-b"}) == ("replica-a", 2)
    assert table.longest_match(shared, {"replica-b"}) == (None, 0)  # dead owners do not attract
    table.insert(block_hashes(list(range(100, 164)), 16), "replica-b")  # 4 new entries evict the old
    assert table.longest_match(shared, {"replica-a", "replica-b"}) == (None, 0)
    table.remove("replica-b")
    assert len(table._owners) == 0
