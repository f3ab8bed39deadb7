"""Fakes for hardware this machine lacks (GPU, NVML, robots) and tiny models."""
