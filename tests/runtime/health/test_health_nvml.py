"""NvmlSource over the fake NVML backend: every injected fault becomes the right NVML-shaped signal."""

import time

import pytest

from runtime.health.nvml import NvmlSource
from runtime.health.nvml_fake import FakeNvml
from runtime.health.taxonomy import FaultClass


@pytest.fixture
def nvml():
    fake = FakeNvml(num_gpus=2)
    source = NvmlSource(fake, node_id="node-a", counter_interval_s=0.0)
    source.start()
    yield fake, source
    source.stop()


def _collect(source, wanted: int = 1, timeout_s: float = 2.0):
    signals, deadline = [], time.monotonic() + timeout_s
    while len(signals) < wanted and time.monotonic() < deadline:
        signals += source.poll()
        time.sleep(0.02)
    return signals


@pytest.mark.parametrize(
    "xid,fault",
    [(13, FaultClass.XID_APP_ERROR), (31, FaultClass.XID_APP_ERROR), (48, FaultClass.XID_DBE),
     (79, FaultClass.GPU_LOST), (94, FaultClass.XID_CONTAINED_ECC), (95, FaultClass.XID_UNCONTAINED_ECC),
     (119, FaultClass.XID_GSP)],
)
def test_xid_events_are_pushed_with_their_class(nvml, xid, fault):
    fake, source = nvml
    fake.inject_xid(1, xid)
    signals = [s for s in _collect(source, wanted=3, timeout_s=0.5) if "xid" in s.data]
    assert [(s.fault_class, s.gpu_index, s.node_id, s.data["xid"]) for s in signals] == [(fault, 1, "node-a", xid)]


def test_counter_faults_are_edges(nvml):
    fake, source = nvml
    assert source.poll() == []
    fake.inject_row_remap_failure(0)
    fake.set_thermal_throttle(1)
    fake.inject_nvlink_errors(0)
    fake.inject_retired_page(1)
    classes = {(s.fault_class, s.gpu_index) for s in _collect(source, wanted=4)}
    assert {(FaultClass.ROW_REMAP_FAILURE, 0), (FaultClass.THERMAL_THROTTLE, 1),
            (FaultClass.NVLINK_ERROR, 0), (FaultClass.RETIRED_PAGES, 1)} <= classes
    assert source.poll() == []  # unchanged counters are not news


def test_ecc_double_bit_event_and_counters(nvml):
    fake, source = nvml
    fake.inject_ecc_double_bit(0)
    signals = _collect(source, wanted=3)
    assert {s.fault_class for s in signals} == {FaultClass.ECC_DBE}
    assert {s.detail.split()[0] for s in signals} >= {"ecc_dbe_volatile", "ecc_dbe_aggregate"}


def test_recovery_action_and_lost_gpu(nvml):
    fake, source = nvml
    fake.set_recovery_action(0, 2)  # node reboot
    assert FaultClass.RECOVERY_REBOOT in {s.fault_class for s in _collect(source, wanted=2)}
    fake.lose_gpu(1)
    lost = [s for s in _collect(source) if s.fault_class == FaultClass.GPU_LOST]
    assert lost and lost[0].gpu_index == 1
