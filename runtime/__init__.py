"""Strata runtime: the library every app shares (engine, kv_transfer, health, elastic, chaos, robot)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
