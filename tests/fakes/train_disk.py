"""Storage faults for checkpoint tests: file-open hooks that fill the disk or crash mid-save."""

from __future__ import annotations

import errno
import os


class SimulatedCrash(BaseException):
    """Stands in for the process dying mid-save (BaseException: nothing on the way may swallow it)."""


class FullDiskOpen:
    """An `open` whose files raise ENOSPC once `capacity_bytes` have been written in total."""

    def __init__(self, capacity_bytes: int) -> None:
        self.remaining_bytes = capacity_bytes

    def __call__(self, path: str, mode: str):
        return _LimitedFile(open(path, mode), self)


class _LimitedFile:
    def __init__(self, handle, budget: FullDiskOpen) -> None:
        self._handle = handle
        self._budget = budget

    def write(self, data: bytes) -> int:
        if len(data) > self._budget.remaining_bytes:
            self._handle.write(data[: self._budget.remaining_bytes])
            self._budget.remaining_bytes = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._handle.name)
        self._budget.remaining_bytes -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


class CrashAfterFiles:
    """An `open` that lets `num_files` files through, then 'kills the process' on the next one."""

    def __init__(self, num_files: int) -> None:
        self.num_files = num_files

    def __call__(self, path: str, mode: str):
        if self.num_files <= 0:
            raise SimulatedCrash(f"crash while opening {path}")
        self.num_files -= 1
        return open(path, mode)
