"""Fault classes: the names every signal source speaks, and how raw NVML codes map onto them.

The tier each class gets is policy and lives in `runtime.elastic.tiers`; this module only names
what happened.
"""

from __future__ import annotations


class FaultClass:
    # Process and progress
    PROCESS_DEATH = "process_death"  # a training worker process exited / was killed
    HANG = "hang"  # no step within the hang timeout
    STRAGGLER = "straggler"  # one rank persistently slower than the others
    WORKER_ERROR = "worker_error"  # the training loop raised
    # Host
    DISK_FULL = "disk_full"  # checkpoint path has no room
    MEMORY_PRESSURE = "memory_pressure"
    CHECKPOINT_CORRUPT = "checkpoint_corrupt"
    # Ray
    NODE_LOSS = "node_loss"
    NODE_DRAIN = "node_drain"  # drain / preemption notice
    ACTOR_DEATH = "actor_death"  # a non-worker actor (e.g. a HealthAgent) died
    # GPU (NVML)
    XID_APP_ERROR = "xid_app_error"  # XID 13 / 31 / 43: usually the application, GPU is fine
    XID_CONTAINED_ECC = "xid_contained_ecc"  # XID 94: contained ECC, restart the app
    XID_DBE = "xid_dbe"  # XID 48: double-bit ECC
    XID_UNCONTAINED_ECC = "xid_uncontained_ecc"  # XID 95: GPU needs a reset
    XID_GSP = "xid_gsp"  # XID 119 / 120: GSP firmware timeout, GPU needs reset, node often reboot
    GPU_LOST = "gpu_lost"  # XID 79 / NVML_ERROR_GPU_IS_LOST: fallen off the bus
    ECC_DBE = "ecc_dbe"  # volatile double-bit ECC counter moved
    ECC_SBE = "ecc_sbe"  # single-bit, corrected
    ROW_REMAP_FAILURE = "row_remap_failure"
    ROW_REMAP_PENDING = "row_remap_pending"
    RETIRED_PAGES = "retired_pages"
    THERMAL_THROTTLE = "thermal_throttle"
    POWER_THROTTLE = "power_throttle"
    NVLINK_ERROR = "nvlink_error"
    RECOVERY_RESET = "recovery_reset"  # NVML recovery action: GPU reset
    RECOVERY_REBOOT = "recovery_reboot"  # NVML recovery action: node reboot / drain
    XID_OTHER = "xid_other"


# XID code -> fault class (NVIDIA's XID catalogue; unlisted codes are XID_OTHER).
XID_CLASSES: dict[int, str] = {
    13: FaultClass.XID_APP_ERROR,  # graphics engine exception
    31: FaultClass.XID_APP_ERROR,  # GPU memory page fault
    43: FaultClass.XID_APP_ERROR,  # GPU stopped processing (reset channel)
    45: FaultClass.XID_APP_ERROR,  # preemptive cleanup after another fault
    48: FaultClass.XID_DBE,  # double-bit ECC error
    63: FaultClass.ROW_REMAP_PENDING,  # ECC page retirement / row remap recorded
    64: FaultClass.ROW_REMAP_FAILURE,  # row remap / page retirement failure
    74: FaultClass.NVLINK_ERROR,
    79: FaultClass.GPU_LOST,  # fallen off the bus
    92: FaultClass.ECC_SBE,  # high single-bit ECC rate
    94: FaultClass.XID_CONTAINED_ECC,
    95: FaultClass.XID_UNCONTAINED_ECC,
    119: FaultClass.XID_GSP,
    120: FaultClass.XID_GSP,
}


def xid_class(xid: int) -> str:
    return XID_CLASSES.get(int(xid), FaultClass.XID_OTHER)


# NVML_FI_DEV_GET_GPU_RECOVERY_ACTION values (nvml.h): 0 none, 1 GPU reset, 2 node reboot,
# 3 drain P2P, 4 drain and reset.
RECOVERY_ACTION_CLASSES: dict[int, str | None] = {
    0: None,
    1: FaultClass.RECOVERY_RESET,
    2: FaultClass.RECOVERY_REBOOT,
    3: FaultClass.RECOVERY_REBOOT,
    4: FaultClass.RECOVERY_REBOOT,
}
