"""Reading chosen frames of a video with PyAV by decoding every frame in order.

The decoder for the streams decord misreads (`tpwng.features.routing`): slower than decord's
seeking on long strides, exact on every file. Frames are counted in display order from 0, as
decord counts them, and converted to RGB by the same FFmpeg conversion (pixel-identical on
the streams both read). Only the frames asked for are kept, so memory stays within a chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class SequentialReader:
    """One open video; `read` takes ascending frame indices, and restarts for an earlier one."""

    def __init__(self, path: str | Path, error: type[Exception] = RuntimeError) -> None:
        self.path = str(path)
        self.error = error
        self.container = None
        self.frames: Iterator | None = None
        self.position = 0  # index of the next frame the decoder gives
        self.last_index, self.last = -1, None  # the last frame returned, as RGB
        self.restart()

    def restart(self) -> None:
        import av

        self.close()
        try:
            self.container = av.open(self.path)
            stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError) as exc:
            raise self.error(f"{self.path}: PyAV cannot open the video ({exc})") from exc
        stream.codec_context.thread_count = 1  # one decoding process, one core (as decord)
        self.frames = self.container.decode(stream)
        self.position = 0
        self.last_index, self.last = -1, None

    def _next(self):
        import av

        try:
            frame = next(self.frames, None)
        except av.FFmpegError as exc:
            raise self.error(f"{self.path}: PyAV decoding failed at frame {self.position} "
                             f"({exc})") from exc
        if frame is None:
            raise self.error(f"{self.path}: PyAV decoded only {self.position} frames, fewer "
                             "than the video's frame count (was the file replaced after the "
                             "manifest was made?)")
        self.position += 1
        return frame

    def read(self, indices: list[int]) -> np.ndarray:
        """uint8 [n, H, W, 3] frames at `indices`."""
        out: list[np.ndarray] = []
        for index in indices:
            if index != self.last_index:
                if index < self.position:
                    self.restart()
                frame = None
                while self.position <= index:
                    frame = self._next()
                self.last_index, self.last = index, frame.to_ndarray(format="rgb24")
            out.append(self.last)
        if not out:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        return np.stack(out)

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container, self.frames = None, None
