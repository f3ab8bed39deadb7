"""MP4 video through PyAV: append episodes to one growing file, decode an episode's time range.

LeRobot v3 concatenates many episodes into one MP4 per camera and finds an episode by its
[from_timestamp, to_timestamp) range; `VideoFileWriter` keeps that bookkeeping and `decode_range`
reads a range back (seek to the keyframe before it, decode forward).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DEFAULT_VIDEO_CODEC = "libx264"
TIMESTAMP_TOLERANCE_S = 1e-4
_CODEC_OPTIONS = {"libx264": {"crf": "18", "preset": "veryfast"}, "libsvtav1": {"crf": "30", "preset": "10"}}


class VideoFileWriter:
    """One MP4 file for one camera; frames are appended episode after episode at a fixed fps."""

    def __init__(self, path: Path, *, fps: int, height: int, width: int, codec: str = DEFAULT_VIDEO_CODEC):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.height = height
        self.width = width
        self.num_frames = 0
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=fps, options=_CODEC_OPTIONS.get(codec, {}))
        # yuv420p needs even dimensions: pad here, readers crop back to (height, width).
        self._stream.width = width + width % 2
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = Fraction(1, fps)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, frames: np.ndarray) -> tuple[float, float]:
        """Append (T, H, W, 3) uint8 frames; returns the episode's (from_timestamp, to_timestamp)."""
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"video frames must have shape (T, {self.height}, {self.width}, 3), got {frames.shape}"
            )
        start = self.duration_s
        pad = ((0, 0), (0, self.height % 2), (0, self.width % 2), (0, 0))
        if any(p[1] for p in pad):
            frames = np.pad(frames, pad, mode="edge")
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = Fraction(1, self.fps)
            self._container.mux(self._stream.encode(frame))
            self.num_frames += 1
        return start, self.duration_s

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def decode_range(
    path: Path, from_timestamp: float, to_timestamp: float, *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Frames with from_timestamp <= t < to_timestamp as (T, H, W, 3) uint8."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if from_timestamp > 0:
            container.seek(int(from_timestamp / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            time_s = float(frame.pts * stream.time_base)
            if time_s < from_timestamp - TIMESTAMP_TOLERANCE_S:
                continue
            if time_s >= to_timestamp - TIMESTAMP_TOLERANCE_S:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path} has no frames in [{from_timestamp}, {to_timestamp})")
    video = np.stack(frames)
    return video[:, :height, :width] if height is not None else video
