"""Bad inputs for the fault tests, and the means to run the real CLI and kill it.

Videos are written with PyAV (libx264) and then damaged at the byte level. `serve_with_faults`
is a decoding child (see tpwng.features.decode_process) that misbehaves on request, to
simulate decoders that hang while holding the GIL or crash. `run_cli` runs `tpwng.cli.main` in
a process of its own group, so that a test can kill it, and everything it started, with SIGKILL.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import struct
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

HANG_ENV = "TPWNG_TEST_DECODER_FAULT"  # "<op>:<file name>:<hang|crash>"


# --------------------------------------------------------------------------- videos


def _pattern(i: int, w: int, h: int, seed: int) -> np.ndarray:
    """A frame that differs from frame to frame and from video to video."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.empty((h, w, 3), np.uint8)
    a[..., 0] = (base[0] + 5 * i + xx * 2) % 256
    a[..., 1] = (base[1] + 3 * i + yy * 3) % 256
    a[..., 2] = (base[2] + ((xx // 8 + yy // 8 + i // 4) % 2) * 120) % 256
    return a


def write_video(path: str | Path, frames: int = 40, size: tuple[int, int] = (64, 48),
                fps: int = 25, seed: int = 0, codec: str = "libx264",
                pix_fmt: str = "yuv420p", fmt: str = "mp4", pts_ms: list[int] | None = None,
                faststart: bool = False, options: dict | None = None) -> Path:
    """A real encoded video; `pts_ms` gives every frame's time (variable frame rate)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=container_options) as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.options = options or {"preset": "ultrafast", "g": "8", "threads": "1"}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(_pattern(i, w, h, seed), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def large_video(path: str | Path, frames: int = 17, size: tuple[int, int] = (3840, 2160)
                ) -> Path:
    """A big frame size made quickly: smooth luma ramps and a moving block, given as YUV."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "g": "8", "threads": "2"}
        for i in range(frames):
            yuv = np.full((h * 3 // 2, w), 128, np.uint8)
            yuv[:h] = (np.arange(w) // 16 % 256).astype(np.uint8)[None, :]
            yuv[100 + 20 * i : 300 + 20 * i, 200:600] = 250
            for p in s.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def vfr_video(path: str | Path, frames: int = 48, seed: int = 0) -> Path:
    """Variable frame rate: gaps of 10-120 ms between frames, with B-frames."""
    gaps = np.random.default_rng(seed).integers(10, 120, frames - 1)
    pts = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    return write_video(path, frames, pts_ms=pts, seed=seed,
                       options={"preset": "medium", "bf": "3", "g": "24", "threads": "1"})


def decode_all(path: str | Path) -> np.ndarray:
    """Every frame in presentation order, decoded sequentially by PyAV (no seeking)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def random_bytes(path: str | Path, n: int = 8192, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n))
    return path


def truncate(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """The first `fraction` of a file's bytes (a download or copy cut short)."""
    data = Path(src).read_bytes()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def zero_packets(src: str | Path, dst: str | Path, first: int, count: int) -> Path:
    """Overwrite the payload of `count` video packets from `first` with zeros: data lost in the
    middle of the stream while the container stays intact (found only when decoding)."""
    import av

    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(Path(src).read_bytes())
    for pos, size in packets[first : first + count]:
        data[pos : pos + size] = bytes(size)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def audio_only(path: str | Path) -> Path:
    """An .mp4 with one AAC audio stream and no video."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(20):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def avi_without_timestamps(path: str | Path, frames: int = 40, seed: int = 0) -> Path:
    """H.264 in AVI as PyAV writes it: decord finds no frame timestamps and, when seeking,
    returns blank frames."""
    return write_video(path, frames, seed=seed, fmt="avi")


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def _boxes(buf: bytes) -> list:
    out, i = [], 0
    while i < len(buf):
        size, typ = struct.unpack(">I4s", buf[i : i + 8])
        body = buf[i + 8 : i + size]
        out.append([typ, _boxes(body) if typ in _CONTAINERS else body])
        i += size
    return out


def _build(boxes: list) -> bytes:
    out = b""
    for typ, body in boxes:
        payload = _build(body) if isinstance(body, list) else body
        out += struct.pack(">I4s", 8 + len(payload), typ) + payload
    return out


def mp4_with_edit_list(src: str | Path, dst: str | Path, skip_frames: int) -> Path:
    """Add an edit list that starts the presentation `skip_frames` frames in (a trimmed clip);
    decord ignores it and returns frames shifted from the ones it names."""
    boxes = _boxes(Path(src).read_bytes())
    moov = next(b for t, b in boxes if t == b"moov")
    mvhd = next(b for t, b in moov if t == b"mvhd")
    movie_scale = struct.unpack(">I", mvhd[12:16])[0]
    for t, trak in moov:
        if t != b"trak":
            continue
        mdia = next(b for tt, b in trak if tt == b"mdia")
        mdhd = next(b for tt, b in mdia if tt == b"mdhd")
        scale, duration = struct.unpack(">II", mdhd[12:20])
        stbl = next(b for tt, b in next(b for tt, b in mdia if tt == b"minf") if tt == b"stbl")
        stts = next(b for tt, b in stbl if tt == b"stts")
        media_time = skip_frames * struct.unpack(">I", stts[12:16])[0]
        segment = (duration - media_time) * movie_scale // scale
        elst = struct.pack(">IIIiHH", 0, 1, segment, media_time, 1, 0)
        trak[:] = [x for x in trak if x[0] != b"edts"]
        trak.insert(1, [b"edts", [[b"elst", elst]]])
    Path(dst).write_bytes(_build(boxes))
    return Path(dst)


# --------------------------------------------------------------------------- datasets


def folder_dataset(root: str | Path, train: list[tuple[str, str]], test: list[tuple[str, str]],
                   annotations: list[str], frames: int = 40, size: tuple[int, int] = (64, 48)
                   ) -> Path:
    """A folder-format dataset of good videos: (Class, id) per video; annotation lines."""
    root = Path(root)
    for k, (cls, vid) in enumerate(train + test):
        write_video(root / "videos" / cls / f"{vid}.mp4", frames, size, seed=k + 1)
    (root / "train.txt").write_text("".join(f"{c}/{v}.mp4\n" for c, v in train))
    (root / "test.txt").write_text("".join(f"{c}/{v}.mp4\n" for c, v in test))
    (root / "annotations.txt").write_text("".join(line + "\n" for line in annotations))
    return root


def copy_dataset(src: str | Path, dst: str | Path) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def add_video(root: str | Path, split: str, relative: str, annotation: str | None = None) -> None:
    """List `relative` (Class/file) in the split, and its annotation line if given."""
    root = Path(root)
    with open(root / f"{split}.txt", "a") as f:
        f.write(relative + "\n")
    if annotation is not None:
        with open(root / "annotations.txt", "a") as f:
            f.write(annotation + "\n")


def folder_settings(root: str | Path, on_bad_video: str = "error", timeout: float = 60.0,
                    **extraction) -> dict:
    """Merged dataset settings (as the rules pass them) for a folder dataset, tiny CLIP."""
    return {
        "name": "faulty", "format": "folder", "root": str(root), "annotation_tolerance": None,
        "classes": ["normal", "fighting"], "synthetic": {},
        "clip": {"model": "tpwng-tiny-ViT-B-16", "pretrained": "none", "seed": 0,
                 "quick_gelu": True},
        "extraction": {"source": "extract", "released_dir": None, "stride": 16,
                       "sample": "center", "crop_mode": "center", "batch_size": 16,
                       "precision": "fp32", "decode_workers": 0, "decode_chunk": 32,
                       "decode_timeout": timeout, "dtype": "float16", "shards": 1,
                       "decoder": "auto", "on_bad_video": on_bad_video} | extraction,
        "model": {"ff_dim": 128, "layers": 1, "heads": 2},
        "train": {"lr": 1e-3, "weight_decay": 0.005, "epochs": 2, "batch_normal": 2,
                  "batch_anomalous": 2, "max_seq_len": 16, "test_crop": 0, "seed": 3,
                  "device": "cpu", "threads": 1},
        "evaluate": {"threshold": 0.5, "plot_videos": 2},
    }


# --------------------------------------------------------------------------- checksums


def store_checksums(path: str | Path) -> dict[str, str]:
    """sha256 of every video's stored array (as stored), by video id."""
    import h5py

    with h5py.File(path, "r") as f:
        return {v: hashlib.sha256(f["videos"][v][()].tobytes()).hexdigest()
                for v in sorted(f["videos"])}


def scores_checksums(path: str | Path) -> dict[str, str]:
    from tpwng.evaluate.scores_file import read_scores

    order, frames, snippets = read_scores(Path(path))
    return {v: hashlib.sha256(frames[v].tobytes() + snippets[v].tobytes()).hexdigest()
            for v in order}


def checkpoint_checksums(path: str | Path) -> dict[str, str]:
    from tpwng.train.checkpoint import load_checkpoint

    state = load_checkpoint(path)["state"]
    return {k: hashlib.sha256(t.numpy().tobytes()).hexdigest() for k, t in sorted(state.items())}


# --------------------------------------------------------------------------- decoding faults


def serve_with_faults() -> None:
    """The decoding child, misbehaving as HANG_ENV asks: for request `op` on a file whose name
    is `name`, hang for ever *holding the GIL* (a C call made through ctypes.PyDLL keeps it,
    as decord's calls do) or crash with SIGSEGV."""
    import ctypes
    import signal

    from tpwng.features import video

    op, name, how = os.environ[HANG_ENV].split(":")
    handle = video.handle_request

    def faulty(reader, request):
        if request[0] == op and len(request) > 1 and Path(request[1]).name == name:
            if how == "hang":
                while True:
                    ctypes.PyDLL(None).sleep(3600)
            os.kill(os.getpid(), signal.SIGSEGV)
        return handle(reader, request)

    video.handle_request = faulty
    video.serve_decoding()


FAULTY_DECODER = [sys.executable, "-c", "from tests.helpers.faults import serve_with_faults; "
                  "serve_with_faults()"]


# --------------------------------------------------------------------------- the real CLI

_PRELOAD = ["torch", "open_clip", "h5py", "decord", "tpwng.cli", "tpwng.features.extract",
            "tpwng.train.loop", "tpwng.scoring.inference", "tpwng.data.datasets",
            "tests.helpers.faults"]


def cli_context():
    """A forkserver context with the heavy imports done once: each run of `run_cli` is a fresh
    process (forked from a server that has imported, never run, torch) running the real
    `tpwng` command line, without paying the imports every time."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_cli(argv: list[str], log: str, cwd: str, fsize_limit: int | None = None) -> None:
    """Target of a `cli_context()` process: `tpwng ARGV` in `cwd`, stderr to `log`.

    The process leads its own group (kill the group to kill the job and its children).
    `fsize_limit` sets RLIMIT_FSIZE (largest file the job may write, in bytes) as a disk that
    fills up; the log is kept in memory meanwhile and written after the limit is lifted.
    """
    import contextlib
    import logging
    import resource
    import signal

    os.setpgid(0, 0)
    # as in a process started from a shell (a forkserver child inherits "forkserver", which
    # would start every DataLoader worker through the server)
    multiprocessing.set_start_method("fork", force=True)
    os.chdir(cwd)
    os.environ["HF_HUB_OFFLINE"] = "1"
    with open(log, "w") as fh:
        os.dup2(fh.fileno(), 2)
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    text = io.StringIO()
    from tpwng.cli import main

    if fsize_limit is None:
        code = main(argv)
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))
        try:
            with contextlib.redirect_stderr(text):
                logging.root.handlers.clear()
                code = main(argv)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        sys.stderr.write(text.getvalue())
    sys.stderr.flush()
    os._exit(code)
