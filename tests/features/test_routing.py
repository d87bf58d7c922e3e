"""Decoder routing, held against videos whose frames carry their own index in the pixels.

Each generated video draws frame i's index as a 10-bit pattern of black and white blocks, so
that a decoded frame says which frame it is. Extraction's reads (the snippets' centre frames,
in chunks) are made with decord, with PyAV and as routed, and the frame numbers compared.
"""

from __future__ import annotations

import shutil
import time

import av
import numpy as np
import pytest

from tests.helpers import faults
from tpwng.data.manifest import make_manifest, read_manifest
from tpwng.features import decode_process
from tpwng.features.clip_backbone import ClipSpec
from tpwng.features.extract import ExtractionSettings, extract
from tpwng.features.routing import choose_decoder, inspect_stream
from tpwng.features.store import FeatureStore
from tpwng.features.video import VideoError, probe_video, read_frames
from tpwng.grid import sample_indices

COLS, ROWS = 5, 2  # 10 bits: frame numbers up to 1023
STRIDE, CHUNK = 16, 4


def draw(i: int, w: int, h: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    bw, bh = w // COLS, h // ROWS
    for b in range(COLS * ROWS):
        if (i >> b) & 1:
            r, c = divmod(b, COLS)
            img[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    return img


def frame_number(img: np.ndarray) -> int:
    h, w = img.shape[:2]
    bw, bh = w // COLS, h // ROWS
    grey = img.mean(-1)
    value = 0
    for b in range(COLS * ROWS):
        r, c = divmod(b, COLS)
        y, x = r * bh + bh // 4, c * bw + bw // 4
        block = grey[y:y + bh // 2, x:x + bw // 2]
        value |= int(block.mean() > 127) << b
    return value


def write_numbered(path, codec: str, n: int, w: int, h: int, options: dict | None = None,
                   b_frames: int | None = None, gop: int | None = None) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if b_frames is not None:
            s.codec_context.max_b_frames = b_frames
        if gop is not None:
            s.codec_context.gop_size = gop
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(draw(i, w, h), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


X264_GOP = "keyint=24:min-keyint=24:bframes=3:scenecut=0"
Q = {"qscale": "3"}
# name: (codec, frames, width, height, options, B-frames, GOP, the decoder auto must choose)
CASES = {
    "h264_bframes.mp4": ("libx264", 300, 320, 240, {"bf": "3", "g": "30"}, None, None, "decord"),
    "h264_closed_gop.mkv": ("libx264", 400, 320, 240, {"x264-params": X264_GOP}, None, None,
                            "decord"),
    "mpeg4_no_bframes.avi": ("mpeg4", 300, 320, 240, Q, 0, 30, "decord"),
    "h264_one_frame.mp4": ("libx264", 1, 64, 48, {}, None, None, "decord"),
    "mpeg4_bframes.avi": ("mpeg4", 300, 320, 240, Q, 2, 30, "pyav"),
    "mpeg4_bframes_97x61.avi": ("mpeg4", 100, 97, 61, Q, 2, 30, "pyav"),
    "mpeg4_bframes.mp4": ("mpeg4", 300, 320, 240, Q, 2, 30, "pyav"),
    "h264_open_gop.mkv": ("libx264", 400, 320, 240, {"x264-params": "open-gop=1:" + X264_GOP},
                          None, None, "pyav"),
}
MISREAD = [n for n, c in CASES.items() if c[-1] == "pyav"]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    d = tmp_path_factory.mktemp("numbered")
    for name, (codec, n, w, h, options, b_frames, gop, _) in CASES.items():
        write_numbered(d / name, codec, n, w, h, options, b_frames, gop)
    return d


def _numbers(path, decoder: str, timeout: float | None = 60) -> tuple[list[int], list[int]]:
    n = probe_video(path).frames
    want = sample_indices(n, STRIDE, "center")
    got = [frame_number(f) for _, frames in read_frames(path, want, chunk=CHUNK, timeout=timeout,
                                                         decoder=decoder) for f in frames]
    return want.tolist(), got


@pytest.mark.parametrize("name", list(CASES))
def test_routed_reads_are_exact_and_fast_streams_stay_with_decord(numbered, name):
    path = numbered / name
    info = probe_video(path)
    assert info.frames == CASES[name][1]
    assert info.decoder == CASES[name][-1], info.route
    want, got = _numbers(path, "auto")
    assert got == want
    want, got = _numbers(path, "pyav")  # PyAV is exact on every case
    assert got == want


@pytest.mark.parametrize("name", MISREAD)
def test_decord_misreads_what_is_routed_away(numbered, name):
    """The facts the routing rests on: decord 0.6.0 returns wrong frames of these files, in
    extraction's chunked reads or in single reads at random frames. A decord release that
    reads them exactly makes this fail, and the rule can go."""
    import decord

    want, got = _numbers(numbered / name, "decord")
    wrong = [(w, g) for w, g in zip(want, got, strict=True) if w != g]
    vr = decord.VideoReader(str(numbered / name), num_threads=1)
    picks = np.random.default_rng(0).integers(0, len(vr), 40).tolist()
    wrong_single = [(i, g) for i in picks if (g := frame_number(vr[i].asnumpy())) != i]
    assert wrong or wrong_single, f"decord read {name} exactly"


def test_stream_facts(numbered):
    facts = {n: inspect_stream(numbered / n) for n in CASES}
    assert facts["mpeg4_bframes.avi"].codec == "mpeg4" and facts["mpeg4_bframes.avi"].b_frames
    assert not facts["mpeg4_no_bframes.avi"].b_frames
    assert facts["h264_open_gop.mkv"].open_gop
    assert not facts["h264_closed_gop.mkv"].open_gop and facts["h264_closed_gop.mkv"].b_frames
    assert not facts["h264_bframes.mp4"].open_gop


def test_decord_setting_refuses_what_it_misreads(numbered):
    path = numbered / "mpeg4_bframes.avi"
    with pytest.raises(VideoError, match=r"mpeg4_bframes.avi: decord returns wrong frames of "
                       r"this video \(MPEG-4 Part 2 with B-frames, mpeg4 in avi\); set "
                       r"extraction.decoder: auto"):
        probe_video(path, decoder_setting="decord")
    assert probe_video(numbered / "h264_bframes.mp4", decoder_setting="decord").decoder == "decord"
    assert probe_video(path, decoder_setting="pyav").decoder == "pyav"
    with pytest.raises(ValueError, match="extraction.decoder must be one of"):
        choose_decoder(inspect_stream(path), "ffmpeg")


def test_pyav_reads_any_order_and_repeats(numbered):
    path = numbered / "mpeg4_bframes.avi"
    idx = np.array([5, 5, 6, 200, 3, 299])
    got = [frame_number(f) for _, fr in read_frames(path, idx, chunk=2, decoder="pyav")
           for f in fr]
    assert got == idx.tolist()
    with pytest.raises(VideoError, match="PyAV decoded only 300 frames"):
        list(read_frames(path, np.array([300]), decoder="pyav"))


def test_manifest_and_store_record_each_videos_decoder(numbered, tmp_path):
    root = tmp_path / "ds"
    listed = {"train": [("Normal", "h264_bframes.mp4"), ("Fighting", "mpeg4_bframes.avi")],
              "test": [("Normal", "h264_closed_gop.mkv"), ("Fighting", "h264_open_gop.mkv")]}
    for split, videos in listed.items():
        for label, name in videos:
            (root / "videos" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(numbered / name, root / "videos" / label / name)
        (root / f"{split}.txt").write_text("".join(f"{c}/{v}\n" for c, v in videos))
    (root / "annotations.txt").write_text("h264_open_gop.mkv Fighting 100 200 -1 -1\n")
    settings = faults.folder_settings(root)
    rows, _ = make_manifest(settings, tmp_path / "manifest.tsv", progress=False)
    assert {r.path.rsplit("/", 1)[1]: r.decoder for r in read_manifest(tmp_path / "manifest.tsv")} \
        == {"h264_bframes.mp4": "decord", "mpeg4_bframes.avi": "pyav",
            "h264_closed_gop.mkv": "decord", "h264_open_gop.mkv": "pyav"}
    ex = ExtractionSettings.from_config(settings["extraction"])
    extract(rows, tmp_path / "f.h5", ClipSpec("tpwng-tiny-ViT-B-16", "none", 0), ex,
            dataset="routing", progress=False)
    with FeatureStore(tmp_path / "f.h5") as store:
        assert {v: store.video_attrs(v)["decoder"] for v in store.video_ids()} == \
            {r.video_id: r.decoder for r in rows}
    strict = faults.folder_settings(root, decoder="decord")
    with pytest.raises(VideoError, match="mpeg4_bframes.avi: decord returns wrong frames"):
        make_manifest(strict, tmp_path / "strict.tsv", progress=False)
    skipping = faults.folder_settings(root, "skip", decoder="decord")
    rows, skipped = make_manifest(skipping, tmp_path / "skip.tsv", progress=False)
    assert sorted(s.path.rsplit("/", 1)[1] for s in skipped) == ["h264_open_gop.mkv",
                                                                 "mpeg4_bframes.avi"]


def test_pyav_decoding_runs_under_the_deadline(numbered, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_process, "HELPER_COMMAND", faults.FAULTY_DECODER)
    monkeypatch.setenv(faults.HANG_ENV, "read:mpeg4_bframes.avi:hang")
    decode_process.shutdown_decoder()
    try:
        t0 = time.monotonic()
        with pytest.raises(VideoError, match="mpeg4_bframes.avi: decoding frames 8-56 did not "
                           "finish within 2 s"):
            list(read_frames(numbered / "mpeg4_bframes.avi", sample_indices(300), chunk=4,
                             timeout=2.0, decoder="pyav"))
        assert time.monotonic() - t0 < 30
    finally:
        decode_process.shutdown_decoder()
