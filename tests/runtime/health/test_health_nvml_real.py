"""NvmlSource on a real GPU through nvidia-ml-py: it starts, reads every counter it can, and stays quiet."""

import time

import pytest

pytestmark = pytest.mark.gpu


def test_real_nvml_source_polls_without_faults():
    import pynvml

    from runtime.health.nvml import NvmlSource, real_nvml_available

    assert real_nvml_available()
    source = NvmlSource(pynvml, node_id="local", counter_interval_s=0.0)
    source.start()
    try:
        time.sleep(0.5)
        signals = source.poll()
    finally:
        source.stop()
    # A healthy idle GPU raises nothing; XID/ECC counters only signal when they move.
    assert all(signal.fault_class in ("thermal_throttle", "power_throttle") for signal in signals), signals
