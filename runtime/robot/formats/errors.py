"""The error a reader raises for a recording it cannot read to the end (a crashed recorder's cut-off file,
flipped bytes): it names the file and the format, and keeps the library's own reason after it."""

from __future__ import annotations


class CorruptRecordingError(ValueError):
    def __init__(self, source: str, format_name: str, cause: BaseException):
        self.source, self.format_name = source, format_name
        super().__init__(f"{source}: {format_name} file is truncated or corrupt ({type(cause).__name__}: {cause})")
