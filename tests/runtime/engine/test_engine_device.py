"""Thread count follows the process's CPU allotment; device and dtype choices."""

from __future__ import annotations

import os

import pytest
import torch

from runtime.engine import device


def test_cpu_allotment_respects_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(device, "_cgroup_cpu_quota", lambda: None)
    assert device.cpu_allotment() == 4
    monkeypatch.setattr(device, "_cgroup_cpu_quota", lambda: 2)
    assert device.cpu_allotment() == 2


def test_configure_threads_caps_at_allotment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(device, "cpu_allotment", lambda: 1)
        torch.set_num_threads(2)
        assert device.configure_threads(None) == 1
        assert device.configure_threads(2) == 2  # an explicit num_threads wins
    finally:
        torch.set_num_threads(before)


def test_dtype_and_device_resolution():
    cpu = torch.device("cpu")
    assert device.resolve_dtype("auto", cpu, {"torch_dtype": "bfloat16"}) == torch.float32
    assert device.resolve_dtype("bfloat16", cpu, {}) == torch.bfloat16
    assert device.resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="device"):
        device.resolve_device("tpu")
