"""Fault perception: signal sources (NVML, host, step heartbeats, Ray) behind one interface, and the HealthAgent."""

from runtime.health.agent import HealthAgent, HealthAgentConfig, start_agents
from runtime.health.host import HostSource, HostSourceConfig
from runtime.health.nvml import NvmlSource, real_nvml_available
from runtime.health.nvml_fake import FakeNvml
from runtime.health.progress import ProgressConfig, ProgressSource
from runtime.health.ray_source import RaySource
from runtime.health.signals import FaultSignal, SignalSource
from runtime.health.taxonomy import FaultClass, xid_class

__all__ = [
    "FakeNvml",
    "FaultClass",
    "FaultSignal",
    "HealthAgent",
    "HealthAgentConfig",
    "HostSource",
    "HostSourceConfig",
    "NvmlSource",
    "ProgressConfig",
    "ProgressSource",
    "RaySource",
    "SignalSource",
    "real_nvml_available",
    "start_agents",
    "xid_class",
]
