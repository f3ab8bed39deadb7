"""A fake NVML backend: the subset of `pynvml` that NvmlSource calls, driven by injected faults.

This machine has no GPU, so tests and chaos drills hand this object to `NvmlSource` in place of the
`pynvml` module. It speaks NVML's shapes: the same function names and arguments, event data with
`.device/.eventType/.eventData`, counters as NVML returns them, and errors as real `pynvml.NVMLError`
subclasses (timeouts from event-set waits, NVML_ERROR_GPU_IS_LOST once a GPU fell off the bus).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pynvml


@dataclass(kw_only=True, slots=True)
class _FakeDevice:
    index: int
    ecc: dict = field(default_factory=dict)  # (error_type, counter_type) -> count
    remapped_rows: list = field(default_factory=lambda: [0, 0, 0, 0])  # corr, unc, pending, failure
    retired_pages: dict = field(default_factory=dict)  # cause -> [addresses]
    clocks_event_reasons: int = 0
    nvlink_errors: dict = field(default_factory=dict)  # (link, counter) -> count
    recovery_action: int = pynvml.NVML_GPU_RECOVERY_ACTION_NONE
    lost: bool = False


@dataclass(kw_only=True, slots=True)
class FakeEventData:
    device: _FakeDevice
    eventType: int  # noqa: N815 - NVML's field name
    eventData: int  # noqa: N815
    gpuInstanceId: int = 0  # noqa: N815
    computeInstanceId: int = 0  # noqa: N815


@dataclass(kw_only=True, slots=True)
class _FieldValue:
    fieldId: int  # noqa: N815
    nvmlReturn: int  # noqa: N815
    value: object


@dataclass(kw_only=True, slots=True)
class _Value:
    ullVal: int  # noqa: N815
    uiVal: int  # noqa: N815


class FakeNvml:
    """In-process NVML with `num_gpus` healthy devices; `inject_*` methods create faults."""

    NVMLError = pynvml.NVMLError

    def __init__(self, num_gpus: int = 2) -> None:
        self._devices = [_FakeDevice(index=i) for i in range(num_gpus)]
        self._events: list[FakeEventData] = []
        self._cond = threading.Condition()
        self._registered: dict[int, int] = {}  # device index -> event mask

    # -- the pynvml surface NvmlSource uses ----------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _FakeDevice:  # noqa: N802
        return self._devices[index]

    def nvmlDeviceGetIndex(self, handle: _FakeDevice) -> int:  # noqa: N802
        return handle.index

    def nvmlEventSetCreate(self) -> object:  # noqa: N802
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetSupportedEventTypes(self, handle: _FakeDevice) -> int:  # noqa: N802
        return pynvml.nvmlEventTypeAll

    def nvmlDeviceRegisterEvents(self, handle: _FakeDevice, event_types: int, event_set: object) -> None:  # noqa: N802
        self._check_lost(handle)
        self._registered[handle.index] = event_types

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> FakeEventData:  # noqa: N802
        deadline = time.monotonic() + timeout_ms / 1000.0
        with self._cond:
            while not self._events:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
                self._cond.wait(remaining)
            return self._events.pop(0)

    def nvmlDeviceGetTotalEccErrors(self, handle: _FakeDevice, error_type: int, counter_type: int) -> int:  # noqa: N802
        self._check_lost(handle)
        return handle.ecc.get((error_type, counter_type), 0)

    def nvmlDeviceGetRemappedRows(self, handle: _FakeDevice) -> tuple[int, int, int, int]:  # noqa: N802
        self._check_lost(handle)
        return tuple(handle.remapped_rows)

    def nvmlDeviceGetRetiredPages(self, handle: _FakeDevice, cause: int) -> list[int]:  # noqa: N802
        self._check_lost(handle)
        return list(handle.retired_pages.get(cause, []))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _FakeDevice) -> int:  # noqa: N802
        self._check_lost(handle)
        return handle.clocks_event_reasons

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: _FakeDevice, link: int, counter: int) -> int:  # noqa: N802
        self._check_lost(handle)
        if link >= 2:  # two links per fake GPU
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.nvlink_errors.get((link, counter), 0)

    def nvmlDeviceGetFieldValues(self, handle: _FakeDevice, field_ids: list[int]) -> list[_FieldValue]:  # noqa: N802
        self._check_lost(handle)
        values = []
        for field_id in field_ids:
            value = handle.recovery_action if field_id == pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION else 0
            values.append(_FieldValue(fieldId=field_id, nvmlReturn=pynvml.NVML_SUCCESS, value=_Value(ullVal=value, uiVal=value)))
        return values

    # -- fault injection -----------------------------------------------------------------------
    def inject_xid(self, gpu_index: int, xid: int) -> None:
        device = self._devices[gpu_index]
        if xid == 79:
            device.lost = True
        if xid == 48:
            self._bump_ecc(device, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        self._push(device, pynvml.nvmlEventTypeXidCriticalError, xid)

    def inject_ecc_double_bit(self, gpu_index: int) -> None:
        device = self._devices[gpu_index]
        self._bump_ecc(device, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        self._push(device, pynvml.nvmlEventTypeDoubleBitEccError, 0)

    def inject_row_remap_failure(self, gpu_index: int) -> None:
        self._devices[gpu_index].remapped_rows[3] = 1

    def inject_row_remap_pending(self, gpu_index: int) -> None:
        self._devices[gpu_index].remapped_rows[2] = 1

    def inject_retired_page(self, gpu_index: int) -> None:
        cause = pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        self._devices[gpu_index].retired_pages.setdefault(cause, []).append(0x1000)

    def set_thermal_throttle(self, gpu_index: int, on: bool = True) -> None:
        bit = pynvml.nvmlClocksEventReasonHwThermalSlowdown
        device = self._devices[gpu_index]
        device.clocks_event_reasons = (device.clocks_event_reasons | bit) if on else (device.clocks_event_reasons & ~bit)

    def inject_nvlink_errors(self, gpu_index: int, link: int = 0, count: int = 10) -> None:
        key = (link, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT)
        device = self._devices[gpu_index]
        device.nvlink_errors[key] = device.nvlink_errors.get(key, 0) + count

    def set_recovery_action(self, gpu_index: int, action: int) -> None:
        device = self._devices[gpu_index]
        device.recovery_action = action
        self._push(device, pynvml.nvmlEventTypeGpuRecoveryAction, action)

    def lose_gpu(self, gpu_index: int) -> None:
        self._devices[gpu_index].lost = True

    def _bump_ecc(self, device: _FakeDevice, error_type: int) -> None:
        for counter_type in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
            device.ecc[(error_type, counter_type)] = device.ecc.get((error_type, counter_type), 0) + 1

    def _push(self, device: _FakeDevice, event_type: int, data: int) -> None:
        with self._cond:
            self._events.append(FakeEventData(device=device, eventType=event_type, eventData=data))
            self._cond.notify_all()

    @staticmethod
    def _check_lost(handle: _FakeDevice) -> None:
        if handle.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
