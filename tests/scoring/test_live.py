"""`tpwng score SOURCE --stream` on live sources: sample videos served in real time over
loopback HTTP by Debian's ffmpeg, and plain socket servers that misbehave.

Most tests stream `bigbuckbunny.mp4` (132 frames at 25 fps, H.264 without B-frames, so a stream
cut anywhere decodes to an exact prefix of the file): what the live path scored can then be
recomputed from the file's own frames.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.scoring.test_score_video import STRIDE, _train
from tpwng.bench.videos import long_video
from tpwng.cli import main
from tpwng.features.store import pick_crop
from tpwng.features.video import probe_video, read_frames
from tpwng.grid import sample_indices
from tpwng.loopback import free_port, loopback_server
from tpwng.scoring.inference import score_features, snippet_class_probs
from tpwng.scoring.live import score_live
from tpwng.scoring.live_source import LiveOptions, display_source, is_live_source, source_stem
from tpwng.scoring.score_video import ScoreOptions, snippet_features
from tpwng.scoring.scorer import load_scorer

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (Debian's "
                                  "ffmpeg: tests/install/ffmpeg.sh, or make ffmpeg)")
VIDEO = "bigbuckbunny"
FRAMES = 132  # of VIDEO


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("live-model"), "tcsal", {"span_scale": 3, "R": 2})


@pytest.fixture(scope="module")
def scorer(model):
    return load_scorer(model, "cpu")


@pytest.fixture(scope="module")
def video(sample_videos) -> Path:
    return sample_videos[VIDEO]


@pytest.fixture(scope="module")
def offline(scorer, video):
    """The file's info, snippet features and snippet scores, scored offline."""
    info = probe_video(video)
    assert info.frames == FRAMES
    feats = np.concatenate(list(snippet_features(scorer, video, info)))
    return info, feats, score_features(scorer.model, feats)


# --------------------------------------------------------------------------- helpers


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def _ffmpeg_server(video: Path, port: int, *output_args: str):
    """ffmpeg serving ``video`` in real time to one HTTP client as MPEG-TS (stream copy)."""
    return loopback_server(video, port, *output_args, ffmpeg=FFMPEG)


@contextmanager
def _socket_server(port: int, send: bytes | None) -> Iterator[None]:
    """Accepts one client; sends ``send`` (None: nothing at all), then holds the connection
    open without a byte more until the test ends (at most 30 s)."""
    done = threading.Event()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            if send is not None:
                conn.recv(4096)  # the request
                conn.sendall(send)
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        server.close()


@contextmanager
def _http_server(files: dict[str, bytes]) -> Iterator[str]:
    """An HTTP server on loopback serving ``files`` (path -> bytes); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "tpwng.cli", "score", *map(str, args)]


def _live_process(port: int, model: Path, out: Path, *args: object) -> subprocess.Popen:
    """`tpwng score http://127.0.0.1:PORT --stream` as a process (text stdout and stderr)."""
    return subprocess.Popen(_cli(f"http://127.0.0.1:{port}", "--model", model, "--out", out,
                                 "--stream", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(capsys, *args: object) -> tuple[int, str, str]:
    rc = main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _snippets(lines: list[dict]) -> list[dict]:
    return [x for x in lines if x["event"] == "snippet"]


def _error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("tpwng score: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _score_frames(scorer, video: Path, source_frames: np.ndarray) -> np.ndarray:
    """Snippet scores of a video made of the file's frames ``source_frames``, in that order,
    sampled and scored as extraction and offline scoring do."""
    picked = source_frames[sample_indices(len(source_frames), STRIDE, "center")]
    frames = np.concatenate([f for _, f in read_frames(video, picked)])
    x = scorer.encoder.prepare(torch.from_numpy(frames))
    return score_features(scorer.model, pick_crop(scorer.encoder.encode(x).numpy(), scorer.crop))


def _outputs(out: Path, stem: str) -> tuple[int, np.ndarray]:
    """Frames and frame scores of the written CSV / intervals / PNG, checked against each
    other."""
    record = json.loads((out / f"{stem}_intervals.json").read_text())
    with open(out / f"{stem}_scores.csv") as f:
        rows = list(csv.DictReader(f))
    frames = record["video"]["frames"]
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    assert (out / f"{stem}_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return frames, np.array([float(r["score"]) for r in rows])


def _threshold(scores: np.ndarray) -> float:
    """A threshold that the scores cross downward, far from every score."""
    s = np.sort(scores)
    best, margin = None, 0.0
    for lo, hi in zip(s[:-1], s[1:], strict=True):
        x = (lo + hi) / 2
        down = any(a >= x > b for a, b in zip(scores[:-1], scores[1:], strict=True))
        if down and hi - lo > margin:
            best, margin = float(x), float(hi - lo)
    assert best is not None and margin > 1e-3, scores
    return best


# --------------------------------------------------------------------------- tests


def test_live_sources_and_their_output_names():
    for live in ("http://cam/x", "https://cam/x", "rtsp://cam:554/s", "rtmp://h/app/key",
                 "udp://@:1234", "/dev/video0", "/dev/video12", "RTSP://Cam/s"):
        assert is_live_source(live), live
    for file in ("clip.mp4", "/data/videos", "/dev/sda", "/dev/video", "file:///x.mp4"):
        assert not is_live_source(file), file
    assert source_stem("rtsp://admin:secret@192.168.1.20:554/live/main.sdp?token=abc") == \
        "192.168.1.20_554_live_main"
    assert source_stem("http://127.0.0.1:8080") == "127.0.0.1_8080"
    assert source_stem("udp://@:1234") == "stream_1234"
    assert source_stem("/dev/video2") == "video2"
    assert display_source("rtsp://admin:secret@cam:554/s") == "rtsp://admin:***@cam:554/s"
    assert display_source("http://cam/x") == "http://cam/x"


def test_live_options_need_a_live_source_and_stream_mode(video, tmp_path, capsys):
    rc, _, err = _run(capsys, video, "--model", tmp_path / "m.pt", "--timeout", 3)
    assert rc == 2 and "--timeout: only for a live source" in _error_line(err)
    rc, _, err = _run(capsys, "rtsp://cam/s", "--model", tmp_path / "m.pt")
    assert rc == 2 and "rtsp://cam/s: a stream or capture device can only be scored live; " \
        "add --stream" in _error_line(err)
    rc, _, err = _run(capsys, "rtsp://cam/s", "--model", tmp_path / "m.pt", "--stream", "--html")
    assert rc == 2 and "--html needs a video file" in _error_line(err)
    rc, _, err = _run(capsys, "rtsp://cam/s", "--model", tmp_path / "m.pt", "--stream",
                      "--timeout", 0)
    assert rc == 2 and "--timeout must be > 0" in _error_line(err)
    rc, _, err = _run(capsys, "rtsp://cam/s", "--model", tmp_path / "m.pt", "--stream",
                      "--threads", 0)
    assert rc == 2 and "--threads >= 1" in _error_line(err)


@needs_ffmpeg
def test_live_scores_equal_offline_with_alerts(model, scorer, video, offline, tmp_path, capsys):
    info, feats, scores = offline
    n = len(scores)
    assert FRAMES % STRIDE and n > 2 * 5  # a partial last snippet; beyond the key window
    x = _threshold(scores)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with _ffmpeg_server(video, port):
        rc, out, err = _run(capsys, url, "--model", model, "--out", tmp_path / "live",
                            "--stream", "--alert-threshold", x, "--threshold", x)
    assert rc == 0, err
    assert time.monotonic() - t0 > FRAMES / info.fps - 0.5  # it was served in real time
    lines = [json.loads(s) for s in out.splitlines()]  # stdout holds JSON lines only
    stem = f"127.0.0.1_{port}"
    assert _read_lines(tmp_path / "live" / f"{stem}_live.jsonl") == lines
    assert lines[0]["event"] == "start" and lines[0]["fps"] == pytest.approx(info.fps)
    assert lines[-1] | {"wall_time": 0} == {"event": "end", "ended_by": "end of stream",
                                            "frames": FRAMES, "snippets": n, "wall_time": 0}
    snips = _snippets(lines)
    assert [s["snippet"] for s in snips] == list(range(n))
    np.testing.assert_allclose([s["score"] for s in snips], scores, atol=1e-5, rtol=0)
    assert [s["start_frame"] for s in snips] == list(range(0, FRAMES, STRIDE))
    assert [s["frames"] for s in snips] == [min(STRIDE, FRAMES - i * STRIDE) for i in range(n)]
    np.testing.assert_allclose([s["time_s"] for s in snips],
                               np.arange(n) * STRIDE / info.fps, atol=1e-9)
    assert all(0 <= s["latency_s"] < 5 for s in snips)
    assert all(datetime.fromisoformat(s["wall_time"]).tzinfo for s in snips)
    # the most likely anomaly class per snippet, p(normal) = 1 - score
    probs = snippet_class_probs(feats, scores, scorer.text, scorer.logit_scale)
    best = 1 + probs[:, 1:].argmax(1)
    assert [s["class"] for s in snips] == [scorer.classes[b] for b in best]
    np.testing.assert_allclose([s["class_probability"] for s in snips],
                               probs[np.arange(n), best], atol=1e-5, rtol=0)
    # alerts where the scores cross x, each right after the snippet that crossed
    expected, start = [], None
    for i, s in enumerate(scores):
        if start is None and s >= x:
            expected.append(("alert_start", i))
            start = i
        elif start is not None and s < x:
            expected.append(("alert_end", i))
            start = None
    if start is not None:
        expected.append(("alert_end", n))
    alerts = [(k, s) for k, s in enumerate(lines) if s["event"].startswith("alert")]
    assert [(s["event"], s["snippet"]) for _, s in alerts] == expected
    assert any(s["event"] == "alert_end" and s["ended_by"] == "score" for _, s in alerts)
    for k, a in alerts:
        if a["snippet"] < n:
            assert lines[k - 1]["event"] == "snippet" and lines[k - 1]["snippet"] == a["snippet"]
        end_s = min(a["snippet"] * STRIDE, FRAMES) / info.fps
        assert a["time_s"] == pytest.approx(a["snippet"] * STRIDE / info.fps
                                            if a["event"] == "alert_start" else end_s)
    # the written outputs are offline scoring's
    frames, live_csv = _outputs(tmp_path / "live", stem)
    assert frames == FRAMES
    assert "the stream ended after 5.3 s" in err
    rc, _, err = _run(capsys, video, "--model", model, "--out", tmp_path / "offline",
                      "--threshold", x)
    assert rc == 0, err
    _, offline_csv = _outputs(tmp_path / "offline", VIDEO)
    np.testing.assert_allclose(live_csv, offline_csv, atol=2e-5, rtol=0)
    got = json.loads((tmp_path / "live" / f"{stem}_intervals.json").read_text())
    want = json.loads((tmp_path / "offline" / f"{VIDEO}_intervals.json").read_text())
    spans = [(iv["start_frame"], iv["end_frame"]) for iv in got["intervals"]]
    assert spans == [(iv["start_frame"], iv["end_frame"]) for iv in want["intervals"]]
    assert got["video"]["path"] == url and got["mode"] == "stream"
    # ... and the alert intervals are the detected intervals, on the snippet grid
    starts = [a["snippet"] for _, a in alerts if a["event"] == "alert_start"]
    ends = [a["snippet"] for _, a in alerts if a["event"] == "alert_end"]
    assert spans == [(s * STRIDE, min(e * STRIDE, FRAMES)) for s, e in zip(starts, ends,
                                                                              strict=True)]


@needs_ffmpeg
def test_killed_server_leaves_partial_results(model, scorer, video, offline, tmp_path):
    port = free_port()
    stem, out = f"127.0.0.1_{port}", tmp_path / "out"
    with _ffmpeg_server(video, port) as server:
        proc = _live_process(port, model, out)
        try:
            _wait(lambda: len(_snippets(_read_lines(out / f"{stem}_live.jsonl"))) >= 4, 60,
                  "four scored snippets")
            server.kill()
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    # a server killed mid-stream looks like the stream's normal end
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert len([x for x in err.splitlines() if "the stream ended after" in x]) == 1, err
    frames, csv_scores = _outputs(out, stem)
    assert 4 * STRIDE <= frames < FRAMES
    lines = _read_lines(out / f"{stem}_live.jsonl")
    assert lines[-1]["event"] == "end" and lines[-1]["frames"] == frames
    got = np.array([s["score"] for s in _snippets(lines)])
    assert len(got) == -(-frames // STRIDE)
    # all but the partial last snippet as offline; that one as a video of the frames received
    np.testing.assert_allclose(got[:-1], offline[2][: len(got) - 1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, _score_frames(scorer, video, np.arange(frames)), atol=1e-5,
                               rtol=0)
    np.testing.assert_allclose(csv_scores[::STRIDE], got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@needs_ffmpeg
def test_a_signal_writes_the_partial_results(model, scorer, video, tmp_path, sig):
    port = free_port()
    stem, out = f"127.0.0.1_{port}", tmp_path / "out"
    with _ffmpeg_server(video, port):
        proc = _live_process(port, model, out)
        try:
            _wait(lambda: len(_snippets(_read_lines(out / f"{stem}_live.jsonl"))) >= 3, 60,
                  "three scored snippets")
            proc.send_signal(sig)
            t0 = time.monotonic()
            stdout, err = proc.communicate(timeout=30)
            took = time.monotonic() - t0
        finally:
            proc.kill()
    assert proc.returncode == 2, err
    assert took < 15  # (frames < FRAMES below: it stopped before the stream's end)
    line = _error_line(err)
    assert f"interrupted by {sig.name} after" in line and f"written to {out}/" in line
    frames, _ = _outputs(out, stem)
    assert 3 * STRIDE <= frames < FRAMES
    lines = _read_lines(out / f"{stem}_live.jsonl")
    assert [json.loads(x) for x in stdout.splitlines()] == lines
    assert lines[-1]["event"] == "end" and lines[-1]["ended_by"] == sig.name
    got = [s["score"] for s in _snippets(lines)]
    np.testing.assert_allclose(got, _score_frames(scorer, video, np.arange(frames)), atol=1e-5,
                               rtol=0)


@needs_ffmpeg
def test_reconnect_continues_the_frames_and_snippets(model, scorer, video, tmp_path):
    port = free_port()
    stem, out = f"127.0.0.1_{port}", tmp_path / "out"
    proc = None
    try:
        with _ffmpeg_server(video, port, "-t", "2") as first:  # the first 2 s, then it ends
            proc = _live_process(port, model, out, "--reconnect", 1, "--timeout", 5)
            first.wait(timeout=60)
        with _ffmpeg_server(video, port):  # the whole video on the same port
            _, err = proc.communicate(timeout=60)
    finally:
        if proc is not None:
            proc.kill()
    cut = int(re.search(r"reconnected; scoring continues at frame (\d+)", err).group(1))
    assert cut == 50  # 2 s at 25 fps
    assert f"the stream ended after {cut} frames; reconnecting (1 of 1" in err
    # after the second server's end, reconnecting fails (nothing listens): partial results
    assert proc.returncode == 2, err
    line = _error_line(err)
    assert f"after frame {cut + FRAMES} and it could not be reopened within 5 s " \
           "(connection refused)" in line and "written to" in line
    frames, _ = _outputs(out, stem)
    assert frames == cut + FRAMES
    lines = _read_lines(out / f"{stem}_live.jsonl")
    assert [(x["event"], x["frame"]) for x in lines if "frame" in x] == [
        ("reconnecting", cut), ("reconnected", cut), ("reconnecting", frames)]
    snips = _snippets(lines)
    assert [s["snippet"] for s in snips] == list(range(-(-frames // STRIDE)))
    assert [s["start_frame"] for s in snips] == list(range(0, frames, STRIDE))
    # one video of the frames in order: the snippet open at the drop spans it
    assert cut % STRIDE
    sequence = np.concatenate([np.arange(cut), np.arange(FRAMES)])
    np.testing.assert_allclose([s["score"] for s in snips], _score_frames(scorer, video, sequence),
                               atol=1e-5, rtol=0)


def test_a_server_that_never_sends_times_out(model, tmp_path, capsys):
    port = free_port()
    url = f"http://127.0.0.1:{port}/cam"
    with _socket_server(port, None):
        t0 = time.monotonic()
        rc, out, err = _run(capsys, url, "--model", model, "--out", tmp_path / "out", "--stream",
                            "--timeout", 2)
        took = time.monotonic() - t0
    assert rc == 2 and out == ""
    assert _error_line(err) == f"tpwng score: error: {url}: cannot open: timed out after 2 s " \
                               "without data"
    assert 2 <= took < 20  # loading the model, then 2 s (the server holds on for 30 s)
    assert not (tmp_path / "out").exists()


def test_a_closed_port_is_refused_at_once(model, tmp_path, capsys):
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    t0 = time.monotonic()
    rc, _, err = _run(capsys, url, "--model", model, "--out", tmp_path, "--stream")
    assert rc == 2 and time.monotonic() - t0 < 10
    assert _error_line(err) == f"tpwng score: error: {url}: cannot open: connection refused"


def test_a_missing_capture_device(model, tmp_path, capsys):
    device = "/dev/video99"
    assert not Path(device).exists()
    rc, _, err = _run(capsys, device, "--model", model, "--out", tmp_path, "--stream")
    assert rc == 2
    assert _error_line(err) == f"tpwng score: error: {device}: cannot open: no such file or device"


def test_not_a_video_stream(model, tmp_path, capsys):
    with _http_server({"/page.html": b"<html>" + b"hello " * 500}) as base:
        rc, _, err = _run(capsys, f"{base}/page.html", "--model", model, "--out", tmp_path,
                          "--stream", "--timeout", 2)
        assert rc == 2 and _error_line(err) == (
            f"tpwng score: error: {base}/page.html: cannot open: not a video stream (the data "
            "is not in a container format FFmpeg reads)")
        rc, _, err = _run(capsys, f"{base}/missing.ts", "--model", model, "--out", tmp_path,
                          "--stream", "--timeout", 2)
        assert rc == 2 and _error_line(err) == (
            f"tpwng score: error: {base}/missing.ts: cannot open: Server returned 404 Not Found")


@needs_ffmpeg
def test_an_audio_only_stream_is_not_a_video_stream(model, tmp_path, capsys):
    audio = tmp_path / "tone.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=duration=1", "-f", "mpegts", str(audio)], check=True, timeout=60)
    with _http_server({"/tone.ts": audio.read_bytes()}) as base:
        rc, _, err = _run(capsys, f"{base}/tone.ts", "--model", model, "--out", tmp_path,
                          "--stream", "--timeout", 2)
    assert rc == 2 and _error_line(err) == (
        f"tpwng score: error: {base}/tone.ts: not a video stream (its streams: audio)")


@needs_ffmpeg
def test_a_stream_that_stalls_times_out_with_partial_results(model, scorer, video, tmp_path,
                                                             capsys):
    ts = tmp_path / "first2s.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(video), "-t", "2",
                    "-c", "copy", "-f", "mpegts", str(ts)], check=True, timeout=60)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _socket_server(port, b"HTTP/1.0 200 OK\r\n\r\n" + ts.read_bytes()):  # then nothing
        t0 = time.monotonic()
        rc, out, err = _run(capsys, url, "--model", model, "--out", tmp_path / "out", "--stream",
                            "--timeout", 2)
        took = time.monotonic() - t0
    assert rc == 2 and took < 20  # the server holds on for 30 s
    line = _error_line(err)
    assert line.startswith(f"tpwng score: error: {url}: timed out after 2 s without data after "
                           "frame ") and f"scored so far are written to {tmp_path / 'out'}/" in line
    frames, _ = _outputs(tmp_path / "out", f"127.0.0.1_{port}")
    assert 40 <= frames <= 50  # what arrived before the stall
    got = [s["score"] for s in _snippets([json.loads(x) for x in out.splitlines()])]
    np.testing.assert_allclose(got, _score_frames(scorer, video, np.arange(frames)), atol=1e-5,
                               rtol=0)


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_over_a_long_stream(scorer, tmp_path):
    """Nothing is kept per frame: the 2,560 frames decoded between two marks (147 MB as RGB)
    add less than 16 MB to the process's resident memory."""
    video = long_video(tmp_path / "long.mp4", 120, 25.0, 160, 120)  # 3,000 frames
    marks: dict[int, int] = {}

    def emit(line: str) -> None:
        record = json.loads(line)
        if record["event"] == "snippet" and record["snippet"] in (50, 370):
            marks[record["snippet"]] = _rss()

    summary = score_live(scorer, str(video), tmp_path / "out", ScoreOptions(stream=True),
                         LiveOptions(), emit=emit, notify=lambda m: None)
    assert summary["videos"][0]["frames"] == 3000 and sorted(marks) == [50, 370]
    assert marks[370] - marks[50] < 16 << 20, marks
