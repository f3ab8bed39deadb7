"""Host and progress sources: process death, full disk, hangs from derived timeouts, stragglers."""

import subprocess
import sys
import time

from helpers.tolerances import ulp

from runtime.chaos import fill_disk
from runtime.health.host import HostSource, HostSourceConfig
from runtime.health.progress import ProgressConfig, ProgressSource
from runtime.health.taxonomy import FaultClass


def test_watched_process_death(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    source = HostSource(HostSourceConfig(checkpoint_dir=str(tmp_path)))
    source.watch_pid(process.pid, rank=3)
    assert source.poll() == []
    process.kill()
    process.wait()
    signals = source.poll()
    assert [(s.fault_class, s.rank, s.pid) for s in signals] == [(FaultClass.PROCESS_DEATH, 3, process.pid)]


def test_disk_full_on_checkpoint_path(tmp_path):
    source = HostSource(HostSourceConfig(checkpoint_dir=str(tmp_path / "ckpt")))
    assert source.poll() == []
    fill_disk(str(tmp_path / "ckpt"))
    assert [s.fault_class for s in source.poll()] == [FaultClass.DISK_FULL]
    assert source.poll() == []  # reported once, not every poll


def test_hang_timeout_is_derived_from_step_time():
    source = ProgressSource(ProgressConfig(hang_timeout_factor=5.0, hang_timeout_min_s=0.2))
    now = time.time()
    for step in range(10):
        for rank in range(2):
            source.record(rank=rank, step=step, time_s=now - 1.0 + step * 0.01, step_time_s=0.1)
    source.record(rank=0, step=10, time_s=time.time(), step_time_s=0.1)
    # 5.0 * median(0.1): 0.1's own float64 rounding and the product's, half a step each at 0.5
    assert abs(source.hang_timeout_s() - 0.5) <= ulp(float, 0.5)
    signals = source.poll()  # rank 1 last stepped ~0.9 s ago > 0.5 s
    assert [(s.fault_class, s.rank) for s in signals] == [(FaultClass.HANG, 1)]
    assert source.poll() == []


def test_straggler_uses_compute_time():
    source = ProgressSource(ProgressConfig(straggler_factor=2.0, straggler_window=4, hang_timeout_s=100))
    now = time.time()
    for step in range(6):
        source.record(rank=0, step=step, time_s=now, step_time_s=0.5, compute_time_s=0.1)
        source.record(rank=1, step=step, time_s=now, step_time_s=0.5, compute_time_s=0.45)
        source.record(rank=2, step=step, time_s=now, step_time_s=0.5, compute_time_s=0.12)
    signals = source.poll()
    assert [(s.fault_class, s.rank) for s in signals] == [(FaultClass.STRAGGLER, 1)]
