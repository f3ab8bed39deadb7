"""NVML signal source: XID events (event-set wait, pushed from a thread) plus counter edges.

Watches what Ray does not: XID critical errors, the GPU recovery-action field, ECC (volatile and
aggregate, single and double bit), remapped rows pending/failed, retired pages, clock-event
(throttle) reasons, NVLink error counters and a GPU lost from the bus. The backend is the real
`pynvml` module (nvidia-ml-py) whenever a GPU is present, or `FakeNvml` in tests and drills.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pynvml

from runtime.health.signals import FaultSignal, SignalSource
from runtime.health.taxonomy import RECOVERY_ACTION_CLASSES, FaultClass, xid_class

logger = logging.getLogger(__name__)

_EVENT_TYPES = (
    pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypeGpuRecoveryAction
    | pynvml.nvmlEventTypeGpuUnavailableError
)
_THERMAL = pynvml.nvmlClocksEventReasonHwThermalSlowdown | pynvml.nvmlClocksEventReasonSwThermalSlowdown
_POWER = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
_NVLINK_COUNTERS = (
    pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
)


def real_nvml_available() -> bool:
    """True when the NVML library loads and reports at least one GPU."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


class NvmlSource(SignalSource):
    """Pushes NVML faults of this node's GPUs; `backend` is `pynvml` or a `FakeNvml`."""

    name = "nvml"

    def __init__(self, backend: Any = pynvml, node_id: str | None = None, counter_interval_s: float = 0.5):
        self._nvml = backend
        self._node_id = node_id
        self._counter_interval_s = counter_interval_s
        self._queue: queue.Queue[FaultSignal] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list[Any] = []
        self._last: dict[tuple, Any] = {}
        self._lost: set[int] = set()
        self._last_counter_check_s = 0.0

    def start(self) -> None:
        self._nvml.nvmlInit()
        self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._nvml.nvmlDeviceGetCount())]
        self._event_set = self._nvml.nvmlEventSetCreate()
        for handle in self._handles:
            try:
                supported = self._nvml.nvmlDeviceGetSupportedEventTypes(handle)
                self._nvml.nvmlDeviceRegisterEvents(handle, _EVENT_TYPES & supported, self._event_set)
            except pynvml.NVMLError as error:  # e.g. NOT_SUPPORTED on consumer GPUs: counters still work
                logger.warning("NVML events not available on GPU %s: %s", self._index(handle), error)
        self._check_counters(initial=True)
        self._thread = threading.Thread(target=self._wait_events, name="nvml-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._nvml.nvmlEventSetFree(self._event_set)
        self._nvml.nvmlShutdown()

    def poll(self) -> list[FaultSignal]:
        now = time.monotonic()
        if now - self._last_counter_check_s >= self._counter_interval_s:
            self._last_counter_check_s = now
            self._check_counters()
        signals = []
        while True:
            try:
                signals.append(self._queue.get_nowait())
            except queue.Empty:
                return signals

    # -- events ---------------------------------------------------------------------------------
    def _wait_events(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._nvml.nvmlEventSetWait_v2(self._event_set, 200)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as error:
                logger.warning("NVML event wait failed: %s", error)
                time.sleep(0.2)
                continue
            self._queue.put(self._event_signal(event))

    def _event_signal(self, event: Any) -> FaultSignal:
        gpu = self._index(event.device)
        now = time.time()
        if event.eventType == pynvml.nvmlEventTypeXidCriticalError:
            xid = int(event.eventData)
            if xid == 79:
                self._lost.add(gpu)
            return self._signal(xid_class(xid), gpu, f"XID {xid}", observed_s=now, data={"xid": xid})
        if event.eventType == pynvml.nvmlEventTypeDoubleBitEccError:
            return self._signal(FaultClass.ECC_DBE, gpu, "double-bit ECC event", observed_s=now)
        if event.eventType == pynvml.nvmlEventTypeGpuRecoveryAction:
            action = int(event.eventData)
            fault = RECOVERY_ACTION_CLASSES.get(action) or FaultClass.RECOVERY_REBOOT
            return self._signal(fault, gpu, f"recovery action {action}", observed_s=now, data={"action": action})
        self._lost.add(gpu)
        return self._signal(FaultClass.GPU_LOST, gpu, "GPU unavailable event", observed_s=now)

    # -- counters (edges only: a signal when a value changes for the worse) ---------------------
    def _check_counters(self, initial: bool = False) -> None:
        for handle in self._handles:
            gpu = self._index(handle)
            if gpu in self._lost:
                continue
            try:
                self._check_device(handle, gpu, initial)
            except pynvml.NVMLError_GpuIsLost:
                self._lost.add(gpu)
                self._queue.put(self._signal(FaultClass.GPU_LOST, gpu, "NVML_ERROR_GPU_IS_LOST", observed_s=time.time()))

    def _check_device(self, handle: Any, gpu: int, initial: bool) -> None:
        nvml = self._nvml
        readings: dict[str, tuple[str, Any]] = {}
        for bit, name in ((pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "dbe"), (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, "sbe")):
            for counter, scope in ((pynvml.NVML_VOLATILE_ECC, "volatile"), (pynvml.NVML_AGGREGATE_ECC, "aggregate")):
                fault = FaultClass.ECC_DBE if name == "dbe" else FaultClass.ECC_SBE
                readings[f"ecc_{name}_{scope}"] = (fault, self._optional(nvml.nvmlDeviceGetTotalEccErrors, handle, bit, counter))
        rows = self._optional(nvml.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            readings["rows_pending"] = (FaultClass.ROW_REMAP_PENDING, rows[2])
            readings["rows_failed"] = (FaultClass.ROW_REMAP_FAILURE, rows[3])
        pages = self._optional(nvml.nvmlDeviceGetRetiredPages, handle, pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        readings["retired_pages"] = (FaultClass.RETIRED_PAGES, None if pages is None else len(pages))
        reasons = self._optional(nvml.nvmlDeviceGetCurrentClocksEventReasons, handle) or 0
        readings["thermal"] = (FaultClass.THERMAL_THROTTLE, int(bool(reasons & _THERMAL)))
        readings["power"] = (FaultClass.POWER_THROTTLE, int(bool(reasons & _POWER)))
        readings["nvlink"] = (FaultClass.NVLINK_ERROR, self._nvlink_errors(handle))
        values = self._optional(nvml.nvmlDeviceGetFieldValues, handle, [pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION])
        if values and values[0].nvmlReturn == pynvml.NVML_SUCCESS:
            action = int(values[0].value.ullVal)
            readings["recovery_action"] = (RECOVERY_ACTION_CLASSES.get(action) or FaultClass.RECOVERY_REBOOT, action)
        for name, (fault, value) in readings.items():
            if value is None:
                continue
            previous = self._last.get((gpu, name))
            self._last[(gpu, name)] = value
            if initial or previous is None or value <= previous:
                continue  # only a counter going up (or a flag turning on) is news
            if name == "recovery_action" and value == pynvml.NVML_GPU_RECOVERY_ACTION_NONE:
                continue
            self._queue.put(self._signal(fault, gpu, f"{name} {previous} -> {value}", observed_s=time.time(), data={name: value}))

    def _nvlink_errors(self, handle: Any) -> int | None:
        total, seen = 0, False
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            for counter in _NVLINK_COUNTERS:
                try:
                    total += self._nvml.nvmlDeviceGetNvLinkErrorCounter(handle, link, counter)
                    seen = True
                except pynvml.NVMLError_GpuIsLost:
                    raise
                except pynvml.NVMLError:
                    break  # link absent or counter unsupported
        return total if seen else None

    def _optional(self, function: Any, *args: Any) -> Any:
        """A reading this GPU may not support (NOT_SUPPORTED on consumer boards) is None; a lost GPU raises."""
        try:
            return function(*args)
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError:
            return None

    def _index(self, handle: Any) -> int:
        if handle in self._handles:
            return self._handles.index(handle)
        return int(self._nvml.nvmlDeviceGetIndex(handle))

    def _signal(self, fault: str, gpu: int, detail: str, observed_s: float, data: dict | None = None) -> FaultSignal:
        return FaultSignal(
            fault_class=fault, source=self.name, node_id=self._node_id, gpu_index=gpu,
            observed_s=observed_s, detail=detail, data=data or {},
        )
