"""Videos for benchmarks: the rows extraction reads, generated long videos (a blocky image
drifting across the screen) and sets of them, and the given-or-generated inputs of
`tpwng bench extract`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def video_rows(videos: list[Path]) -> list[SimpleNamespace]:
    from tpwng.features.video import probe_video

    rows = []
    for p in videos:
        info = probe_video(p)
        rows.append(SimpleNamespace(video_id=p.stem, path=str(p), frames=info.frames,
                                    fps=info.fps, decoder=info.decoder))
    return rows


def _moving_pattern(n: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Cheap frames for long test videos: a blocky image drifting across the screen.

    16x16 blocks keep the H.264 stream small (an hour of noise would be gigabytes).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-height // 16), -(-width * 2 // 16), 3), dtype=np.uint8)
    base = np.kron(cells, np.ones((16, 16, 1), np.uint8))[:height, : width * 2]
    for t in range(n):
        off = t % width
        yield base[:, off : off + width]


def long_video(path: Path, seconds: float, fps: float = 25.0, width: int = 320,
               height: int = 240, seed: int = 0) -> Path:
    """A generated H.264 video of the given length (kept for later runs)."""
    from tpwng.data.synthetic import SyntheticSpec, write_video

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(fps=fps, width=width, height=height)
        print(f"writing {path} ({seconds:g} s)", file=sys.stderr)
        write_video(path, _moving_pattern(round(seconds * fps), width, height, seed), spec)
    return path


def _write_pattern_video(job: tuple[Path, int, int]) -> None:
    """In a worker process: one generated 320x240 video at 25 fps (path, frames, seed)."""
    path, frames, seed = job
    long_video(path, frames / 25.0, seed=seed)


def pattern_videos(workdir: Path, count: int, frames: int) -> list[Path]:
    """`count` distinct 320x240 H.264 videos of `frames` frames in `workdir`, written in
    parallel processes the first time and kept."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    paths = [workdir / f"pattern-{frames}f-{i:02d}.mp4" for i in range(count)]
    todo = [(p, frames, i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"writing {len(todo)} videos of {frames} frames in {workdir}", file=sys.stderr)
        # fork: the workers need no fresh interpreter (nothing has touched CUDA yet)
        with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1),
                                 mp_context=mp.get_context("fork")) as pool:
            list(pool.map(_write_pattern_video, todo))
    return paths


def repeated_rows(rows: list, frames: int) -> list[SimpleNamespace]:
    """`rows` cycled, each repeat under its own video id, until they hold `frames` frames."""
    out: list[SimpleNamespace] = []
    total = 0
    while total < frames:
        r = rows[len(out) % len(rows)]
        out.append(SimpleNamespace(**{**vars(r), "video_id": f"{r.video_id}-{len(out)}"}))
        total += r.frames
    return out


def given_or_generated(a: argparse.Namespace) -> list[Path]:
    """The videos (or the videos in the folders) of `a.videos`; without any, a generated set
    in WORKDIR/bench-videos (written once: `a.generate` videos of `a.frames` frames)."""
    if a.videos:
        found = []
        for v in a.videos:
            p = Path(v)
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".mp4", ".avi",
                            ".mkv", ".mov")) if p.is_dir() else [p]
        return found
    from tpwng.data.synthetic import SyntheticSpec, generate

    root = Path(a.workdir) / "bench-videos"
    if not (root / "test.txt").exists():
        generate(root, SyntheticSpec(train_normal=a.generate, train_per_class=1, test_normal=1,
                                     test_per_class=1, width=320, height=240,
                                     min_frames=a.frames, max_frames=a.frames), jobs=2)
    return sorted((root / "videos").rglob("*.mp4"))
