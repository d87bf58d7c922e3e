"""The viewer: `tpwng score --html`, `tpwng view` and `tpwng view --serve`, in headless Chromium.

Browser tests drive Debian's Chromium through its chromedriver (`tests/install/browser.sh`)
and are skipped, with the reason, where either is missing. Each page's screenshot is kept in
the test's folder and copied to /tmp/viewer-shots/.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.dag import job_counts, snakemake, tiny_config
from tests.scoring.test_score_video import _train
from tpwng.cli import main
from tpwng.data.manifest import ManifestRow, write_manifest
from tpwng.evaluate.metrics import labels_to_intervals
from tpwng.features.store import h5_create
from tpwng.features.video import probe_video
from tpwng.grid import expand_to_frames
from tpwng.scoring.viewer import decode_values, encode_values, playability, transcode, video_stats
from tpwng.scoring.viewer_server import make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path("/tmp/viewer-shots")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900")
STRIDE = 8  # the tiny model's (tests/scoring/test_score_video.py)
TEST_STRIDE = 16


# --------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


def _mpeg4_avi(path: Path, frames: int = 60, fps: int = 25) -> Path:
    """A short MPEG-4 Part 2 AVI (a yellow square moving): a video browsers do not play."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            a = np.full((64, 96, 3), (30, 60, 90), np.uint8)
            x = (i * 3) % 80
            a[20:40, x : x + 16] = (250, 200, 40)
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode(None))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory, sample_videos) -> Path:
    d = tmp_path_factory.mktemp("viewer-videos")
    for name in ("bikes", "carphone_pristine"):
        shutil.copy(sample_videos[name], d / f"{name}.mp4")
    _mpeg4_avi(d / "moving_square.avi")
    return d


@pytest.fixture(scope="module")
def scored(tmp_path_factory, videos) -> dict:
    """A folder scored by a tiny trained model with --html, at a threshold that gives bikes.mp4
    at least two detected intervals."""
    from tpwng.scoring.score_video import score_offline
    from tpwng.scoring.scorer import load_scorer

    d = tmp_path_factory.mktemp("viewer-scored")
    model = _train(d, "tcsal", {"span_scale": 3, "R": 2})
    bikes = videos / "bikes.mp4"
    info = probe_video(bikes)
    frames = expand_to_frames(score_offline(load_scorer(model, "cpu"), bikes, info),
                              info.frames, STRIDE)
    threshold = next(t for t in np.quantile(frames, [0.6, 0.5, 0.7, 0.4, 0.8, 0.3])
                     if len(labels_to_intervals(frames >= t)) >= 2)
    out = d / "out"
    rc = main(["score", str(videos), "--model", str(model), "--out", str(out), "--threshold",
               str(float(threshold)), "--html", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    return {"out": out, "summary": summary, "threshold": float(threshold),
            "entries": {Path(v["video"]).stem: v for v in summary["videos"]}}


def _write_scores(path: Path, scores: dict[str, np.ndarray], frames: dict[str, int],
                  probs: dict[str, np.ndarray] | None = None,
                  classes: list[str] | None = None) -> None:
    """A scores file laid out as `tpwng.scoring.inference.score_test_set` writes it."""
    with h5_create(path) as f:
        f.attrs.update(dataset="toy", model="models/toy/tpwng.pt", weights="random-init:seed=0",
                       stride=TEST_STRIDE, test_crop=0, order="\n".join(scores))
        snip, fr = f.create_group("snippets"), f.create_group("frames")
        for v, s in scores.items():
            snip[v] = s.astype(np.float32)
            fr[v] = expand_to_frames(s, frames[v], TEST_STRIDE).astype(np.float32)
        if probs:
            f.attrs["classes"] = "\n".join(classes)
            g = f.create_group("class_probs")
            for v, p in probs.items():
                g[v] = p.astype(np.float32)


def _bumps(n: int, centres: list[float], rng) -> np.ndarray:
    """Scores with bumps at the given fractions of the video, plus noise, in [0, 1]."""
    x = np.linspace(0, 1, n)
    s = 0.1 + sum(0.8 * np.exp(-((x - c) / 0.06) ** 2) for c in centres)
    return np.clip(s + rng.normal(0, 0.03, n), 0, 1)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory, videos) -> dict:
    """A test set of raw videos (one a browser cannot play, one whose file is gone), its
    manifest, made-up scores with class probabilities, and `tpwng view`'s page."""
    d = tmp_path_factory.mktemp("viewer-testset")
    rng = np.random.default_rng(0)
    classes = ["normal", "fighting", "robbery"]
    specs = [  # id, file, classes, intervals, bumps
        ("bikes_fight", videos / "bikes.mp4", ["fighting"], [(50, 110), (180, 230)],
         [0.3, 0.8]),
        ("carphone_normal", videos / "carphone_pristine.mp4", ["normal"], [], [0.5]),
        ("square_robbery", videos / "moving_square.avi", ["robbery"], [(10, 30)], [0.8]),
        ("gone_fight", d / "missing.mp4", ["fighting"], [(0, 60)], [0.7]),
    ]
    rows, scores, frames, probs = [], {}, {}, {}
    for vid, path, cls, intervals, bumps in specs:
        info = probe_video(path) if path.exists() else None
        n_frames = info.frames if info else 200
        fps = info.fps if info else 25.0
        rows.append(ManifestRow(vid, str(path), "test", cls, intervals, n_frames, fps, 64, 48))
        n = -(-n_frames // TEST_STRIDE)
        scores[vid] = _bumps(n, bumps, rng)
        p = rng.dirichlet(np.ones(2), n) * scores[vid][:, None]
        probs[vid] = np.column_stack([1 - scores[vid], p])
        frames[vid] = n_frames
    rows.append(ManifestRow("train_only", str(videos / "bikes.mp4"), "train", ["normal"], [],
                            250, 25.0, 64, 48))
    write_manifest(rows, d / "manifest.tsv")
    _write_scores(d / "scores.h5", scores, frames, probs, classes)
    out = d / "results" / "viewer"
    assert main(["view", "--manifest", str(d / "manifest.tsv"), "--scores",
                 str(d / "scores.h5"), "--out", str(out), "--settings",
                 json.dumps({"name": "toy", "evaluate": {"threshold": 0.5}})]) == 0
    return {"dir": d, "out": out, "rows": [r for r in rows if r.split == "test"],
            "scores": scores, "frames": frames, "threshold": 0.5}


@pytest.fixture(scope="module")
def released_set(tmp_path_factory) -> dict:
    """Released features: no frame rate, no video files; one video two hours long (13,500
    snippets at 30 fps) whose single highest snippet must stay visible."""
    d = tmp_path_factory.mktemp("viewer-released")
    rng = np.random.default_rng(1)
    long_n = 2 * 3600 * 30 // TEST_STRIDE
    long = np.clip(0.15 + rng.normal(0, 0.02, long_n), 0, 1)
    spike = int(long_n * 0.37)
    long[spike] = 0.97
    long[int(long_n * 0.7) : int(long_n * 0.72)] = 0.8
    short = _bumps(40, [0.5], rng)
    scores = {"Long_x264": long, "Short_x264": short}
    frames = {v: len(s) * TEST_STRIDE for v, s in scores.items()}
    rows = [ManifestRow("Long_x264", "Abuse/Long_x264.mp4", "test", ["abuse"],
                        [(int(long_n * 0.7) * TEST_STRIDE, int(long_n * 0.75) * TEST_STRIDE)],
                        frames["Long_x264"], float("nan"), 0, 0),
            ManifestRow("Short_x264", "Normal/Short_x264.mp4", "test", ["normal"], [],
                        frames["Short_x264"], float("nan"), 0, 0)]
    write_manifest(rows, d / "manifest.tsv")
    _write_scores(d / "scores.h5", scores, frames)
    out = d / "viewer"
    assert main(["view", "--manifest", str(d / "manifest.tsv"), "--scores",
                 str(d / "scores.h5"), "--out", str(out)]) == 0
    return {"out": out, "long_n": long_n, "spike": spike, "frames": frames}


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian's chromium and "
                    "chromium-driver: tests/install/browser.sh)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="tpwng-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- browser helpers


def _open(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1280, 900)
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return !!(window.tpwngViewer && tpwngViewer.ready)"))


def _wait(driver, script: str, timeout: float = 20) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def _wait_video(driver) -> None:
    _wait(driver, "const v = document.querySelector('video'); "
                  "return v && v.readyState >= 2 && !v.seeking")


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _shot(driver, tmp_path: Path, name: str) -> Path:
    """A screenshot of the whole page, in the test's folder and in /tmp/viewer-shots/."""
    from selenium.common.exceptions import TimeoutException

    try:  # the frame shown, not the loading spinner (cosmetic: a slow decoder only delays)
        _wait(driver, "return [...document.querySelectorAll('video')]"
                      ".every(v => v.readyState >= 3)", timeout=5)
    except TimeoutException:
        pass
    for _ in range(2):  # the page's height at the emulated width
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": int(min(max(height, 600), 3000)), "deviceScaleFactor": 1,
            "mobile": False})
        time.sleep(0.3)  # a resize redraws the canvases
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def _js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def _click_timeline(driver, fraction: float) -> tuple[float, float]:
    """Click the player's timeline at `fraction` of its plot area: the time clicked, and the
    time one and a half pixels span (the click's own precision)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "timeline")
    width = _js(driver, "return arguments[0].clientWidth", canvas)
    x0, x1 = 58, width - 12  # the plot area's margins (viewer.js, Timeline.geometry)
    x = x0 + fraction * (x1 - x0)
    ActionChains(driver).move_to_element_with_offset(canvas, int(round(x - width / 2)), 0) \
        .click().perform()
    total = float(canvas.get_attribute("data-total"))
    return (round(x) - x0) / (x1 - x0) * total, 1.5 * total / (x1 - x0)


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _now(driver) -> float:
    return float(_js(driver, "return tpwngViewer.player.now()"))


def _playhead(driver) -> float:
    return float(driver.find_element("id", "timeline").get_attribute("data-playhead"))


# --------------------------------------------------------------------------- without a browser


def test_scores_are_quantised_to_two_bytes_a_snippet():
    values = np.random.default_rng(0).random(13_500)
    text = encode_values(values)
    assert len(text) <= 4 * -(-2 * len(values) // 3)
    np.testing.assert_allclose(decode_values(text), values, atol=1 / 131_070 + 1e-7)
    assert decode_values(encode_values([-1.0, np.nan, 2.0])).tolist() == [0.0, 0.0, 1.0]


def test_video_stats_against_the_truth():
    scores = np.array([0.1, 0.9, 0.9, 0.2, 0.6, 0.1, 0.1, 0.7])
    s = video_stats(scores, 0.5, [(1, 4)])
    assert s["false_alarms"] == 2 and s["missed"] == 1 and s["truth_frames"] == 3
    assert s["max"] == pytest.approx(0.9) and s["above"] == 4
    from sklearn.metrics import roc_auc_score

    assert s["auc"] == pytest.approx(roc_auc_score([0, 1, 1, 1, 0, 0, 0, 0], scores))
    assert video_stats(scores, 0.5, [])["auc"] is None  # one class only
    assert "auc" not in video_stats(scores, 0.5)


def test_browser_playable_or_converted(videos, tmp_path, sample_videos):
    assert playability(videos / "bikes.mp4") is None
    assert "not a browser video container" in playability(videos / "moving_square.avi")
    copy = transcode(videos / "moving_square.avi", tmp_path / "copy.mp4", 25.0)
    assert playability(copy) is None
    got, want = probe_video(copy), probe_video(videos / "moving_square.avi")
    assert (got.frames, got.fps) == (want.frames, want.fps)
    mkv = tmp_path / "bikes.webm"
    shutil.copy(sample_videos["bikes"], mkv)  # an MP4 named .webm
    assert "not webm" in playability(mkv)


def test_score_html_writes_a_page_per_video_and_an_index(scored):
    out, entries = scored["out"], scored["entries"]
    assert set(entries) == {"bikes", "carphone_pristine", "moving_square"}
    for stem, e in entries.items():
        assert Path(e["outputs"]["html"]) == out / f"{stem}.html"
        assert Path(e["outputs"]["thumbnail"]).read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
        page = (out / f"{stem}.html").read_text()
        assert "<video" not in page  # built by the inline script
        assert "http://" not in page and "https://" not in page  # nothing fetched
    assert Path(entries["moving_square"]["outputs"]["playable"]) == out / "moving_square_view.mp4"
    assert "playable" not in entries["bikes"]["outputs"]
    assert (out / "index.html").is_file()


def test_range_server_answers_partial_content(videos):
    data = (videos / "bikes.mp4").read_bytes()
    server = make_server(videos, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def get(headers: dict) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/bikes.mp4", headers=headers)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    try:
        status, h, body = get({"Range": "bytes=100-1099"})
        assert status == 206 and body == data[100:1100]
        assert h["content-range"] == f"bytes 100-1099/{len(data)}"
        assert h["content-length"] == "1000" and h["accept-ranges"] == "bytes"
        assert h["content-type"] == "video/mp4"
        status, h, body = get({"Range": f"bytes={len(data) - 10}-"})
        assert status == 206 and body == data[-10:]
        status, h, body = get({"Range": "bytes=-500"})
        assert status == 206 and body == data[-500:]
        assert h["content-range"] == f"bytes {len(data) - 500}-{len(data) - 1}/{len(data)}"
        status, h, body = get({"Range": f"bytes=0-{10 * len(data)}"})  # past the end: clipped
        assert status == 206 and body == data
        status, h, _ = get({"Range": f"bytes={len(data)}-"})
        assert status == 416 and h["content-range"] == f"bytes */{len(data)}"
        status, h, body = get({})
        assert status == 200 and body == data and h["accept-ranges"] == "bytes"
        status, _, body = get({"Range": "bytes=0-1,5-9"})  # several ranges: the whole file
        assert status == 200 and body == data
    finally:
        server.shutdown()
        server.server_close()


def test_view_needs_its_inputs(capsys):
    assert main(["view", "--manifest", "m.tsv"]) == 2
    assert "give --manifest, --scores and --out" in capsys.readouterr().err


def test_the_dag_builds_the_viewer_page(tmp_path):
    out = snakemake("-n", "--cores", "2", cwd=tmp_path, config=tiny_config(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_counts(out.stdout).get("viewer") == 1, out.stdout
    assert "results/synthetic/viewer/index.html" in out.stdout


# --------------------------------------------------------------------------- in the browser


def test_video_page_plays_seeks_and_jumps_between_intervals(browser, scored, tmp_path):
    out, e = scored["out"], scored["entries"]["bikes"]
    record = json.loads((out / "bikes_intervals.json").read_text())
    fps, n = record["video"]["fps"], record["video"]["snippets"]
    starts = [iv["start_s"] for iv in record["intervals"]]
    assert len(starts) >= 2
    _open(browser, (out / "bikes.html").as_uri())
    _wait_video(browser)
    canvas = browser.find_element("id", "timeline")
    assert int(canvas.get_attribute("data-snippets")) == n
    assert _js(browser, "return document.querySelector('video').getAttribute('src')") \
        == Path(os.path.relpath(e["video"], out)).as_posix()
    # the video seeks (from file://) and the playhead follows
    _js(browser, "document.querySelector('video').currentTime = 6.5")
    _wait_video(browser)
    assert _playhead(browser) == pytest.approx(6.5, abs=1e-3)
    # a click on the timeline seeks the video there, within a snippet
    clicked, pixel = _click_timeline(browser, 0.3)
    _wait_video(browser)
    assert pixel < STRIDE / fps and abs(_now(browser) - clicked) < STRIDE / fps
    assert _playhead(browser) == pytest.approx(_now(browser), abs=1e-3)
    # n / p: next and previous detected interval
    _js(browser, "tpwngViewer.player.seek(0)")
    expected = [s for s in starts if s > 0.5 * STRIDE / fps]
    for want in expected[:2]:
        _press(browser, "n")
        assert _now(browser) == pytest.approx(want, abs=1e-3)
    _press(browser, "p")
    assert _now(browser) == pytest.approx(expected[0], abs=1e-3)
    # playback moves the playhead
    _js(browser, "tpwngViewer.player.seek(1); document.querySelector('video').play()")
    _wait(browser, "return document.querySelector('video').currentTime > 2")
    _js(browser, "document.querySelector('video').pause()")
    time.sleep(0.2)
    assert _playhead(browser) == pytest.approx(_now(browser), abs=0.05) and _now(browser) > 2
    chips = browser.find_elements("css selector", "#intervals .tp-chip")
    assert len(chips) == len(starts)
    _js(browser, "tpwngViewer.player.seek(arguments[0])", starts[1] + 0.2)
    _wait_video(browser)
    _shot(browser, tmp_path, "score-video-page")
    assert _errors(browser) == []


def test_unplayable_video_plays_from_its_copy(browser, scored):
    out = scored["out"]
    _open(browser, (out / "moving_square.html").as_uri())
    _wait_video(browser)
    src = _js(browser, "return document.querySelector('video').getAttribute('src')")
    assert src == "moving_square_view.mp4"
    assert _js(browser, "return document.querySelector('video').duration") \
        == pytest.approx(60 / 25, abs=0.05)
    assert _errors(browser) == []


def test_folder_index_lists_every_video_by_highest_score(browser, scored, tmp_path):
    entries = scored["entries"]
    _open(browser, (scored["out"] / "index.html").as_uri())
    _wait(browser, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    ids = _js(browser, "return [...document.querySelectorAll('#videos tbody tr')]"
                       ".map(r => r.dataset.id)")
    assert ids == sorted(entries, key=lambda s: -entries[s]["max_score"])
    links = _js(browser, "return [...document.querySelectorAll('#videos tbody a')]"
                         ".map(a => a.getAttribute('href'))")
    assert sorted(links) == sorted(f"{s}.html" for s in entries)
    assert len(browser.find_elements("css selector", "#videos img.thumb")) == len(entries)
    _shot(browser, tmp_path, "score-folder-index")
    assert _errors(browser) == []


def test_served_page_seeks_through_range_requests(browser, scored, videos):
    """Served from the folder above the outputs and the videos, as the page links them."""
    root = scored["out"].parent
    assert videos.parent == root.parent  # both below pytest's temporary root
    server = make_server(root.parent, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rel = scored["out"].relative_to(root.parent).as_posix()
        _open(browser, f"http://127.0.0.1:{server.server_address[1]}/{rel}/bikes.html")
        _wait_video(browser)
        assert _js(browser, "return document.querySelector('video').seekable.length") > 0
        _js(browser, "document.querySelector('video').currentTime = 5")
        _wait_video(browser)
        assert _js(browser, "return document.querySelector('video').currentTime") == 5
        assert _playhead(browser) == pytest.approx(5, abs=1e-3)
        assert _errors(browser) == []
    finally:
        server.shutdown()
        server.server_close()


def _expected_order(test_set: dict, key: str) -> list[str]:
    """Video ids by a sort key, computed here from the frame scores and the manifest."""
    from sklearn.metrics import roc_auc_score

    thr, values = test_set["threshold"], {}
    for r in test_set["rows"]:
        fs = expand_to_frames(test_set["scores"][r.video_id], r.frames, TEST_STRIDE)
        truth = np.zeros(r.frames, bool)
        for s, e in r.intervals:
            truth[s:e] = True
        above = fs >= thr
        values[r.video_id] = {
            "auc": roc_auc_score(truth, fs) if truth.any() and not truth.all() else None,
            "false_alarms": int((above & ~truth).sum()),
            "missed": int((truth & ~above).sum())}
    sign = {"auc": 1, "false_alarms": -1, "missed": -1}[key]
    have = [v for v in values if values[v][key] is not None]
    lacking = sorted(v for v in values if values[v][key] is None)
    return sorted(have, key=lambda v: (sign * values[v][key], v)) + lacking


def test_test_set_page_lists_sorts_and_plays(browser, test_set, tmp_path):
    from selenium.webdriver.support.ui import Select

    _open(browser, (test_set["out"] / "index.html").as_uri())
    rows = lambda: _js(browser, "return tpwngViewer.order()")  # noqa: E731
    assert sorted(rows()) == sorted(r.video_id for r in test_set["rows"])  # train left out
    assert rows() == _expected_order(test_set, "auc")  # the default: worst AUC first
    for key in ("false_alarms", "missed", "auc"):
        Select(browser.find_element("id", "sort")).select_by_value(
            f"{key}:{-1 if key != 'auc' else 1}")
        assert rows() == _expected_order(test_set, key), key
    header = browser.find_element("css selector", "th[data-key=missed]")
    header.click()
    assert rows() == _expected_order(test_set, "missed")
    header.click()  # again: the other way round
    assert _js(browser, "return document.querySelector('#videos tbody').dataset.sort") \
        == "missed:1"
    # the chosen video plays, its truth is drawn, N / P jump between true intervals
    browser.find_element("css selector", "tr[data-id=bikes_fight]").click()
    _wait_video(browser)
    src = _js(browser, "return document.querySelector('video').getAttribute('src')")
    assert src.endswith("/bikes.mp4") and src.startswith("../")
    canvas = browser.find_element("id", "timeline")
    assert int(canvas.get_attribute("data-snippets")) == len(test_set["scores"]["bikes_fight"])
    _js(browser, "tpwngViewer.player.seek(0)")
    _press(browser, "N")
    assert _now(browser) == pytest.approx(50 / 25, abs=1e-3)
    _press(browser, "N")
    assert _now(browser) == pytest.approx(180 / 25, abs=1e-3)
    _press(browser, "P")
    assert _now(browser) == pytest.approx(50 / 25, abs=1e-3)
    clicked, pixel = _click_timeline(browser, 0.6)
    assert abs(_now(browser) - clicked) < max(TEST_STRIDE / 25, pixel)
    legend = _js(browser, "return [...document.querySelectorAll('.tp-legend label')]"
                          ".map(l => l.textContent)")
    assert legend == ["p(fighting)", "p(robbery)"]
    # j / k walk the table; the unplayable AVI plays from its copy in media/
    browser.find_element("css selector", "tr[data-id=square_robbery]").click()
    _wait_video(browser)
    assert _js(browser, "return document.querySelector('video').getAttribute('src')") \
        .startswith("media/")
    order = rows()
    _press(browser, "j")
    here = order.index("square_robbery")
    if here + 1 < len(order):
        assert _js(browser, "return document.querySelector('tr.sel').dataset.id") \
            == order[here + 1]
    # the video whose file is gone: the timeline alone, and why
    browser.find_element("css selector", "tr[data-id=gone_fight]").click()
    assert "is not on this machine" in browser.find_element("id", "no-video").text
    assert browser.find_elements("css selector", "section video") == []
    browser.find_element("css selector", "tr[data-id=bikes_fight]").click()
    _wait_video(browser)
    _js(browser, "tpwngViewer.player.seek(3.1)")
    _wait_video(browser)
    _shot(browser, tmp_path, "test-set-page")
    assert _errors(browser) == []


def test_released_features_show_long_timelines_alone(browser, released_set, tmp_path):
    page = released_set["out"] / "index.html"
    assert page.stat().st_size < 200_000  # 13,540 snippets at 2 bytes, in base64, + script
    _open(browser, page.as_uri() + "#Long_x264")
    note = browser.find_element("id", "no-video").text
    assert "released features" in note
    assert browser.find_elements("tag name", "video") == []
    canvas = browser.find_element("id", "timeline")
    assert int(canvas.get_attribute("data-snippets")) == released_set["long_n"]
    width = _js(browser, "return arguments[0].width", canvas)  # device pixels
    assert int(canvas.get_attribute("data-points")) <= width  # one vertex per column
    assert _js(browser, "return document.getElementsByTagName('*').length") < 400
    # the single highest snippet (0.97) is still drawn: a red pixel near the top of its column
    frames = released_set["frames"]["Long_x264"]
    x = 58 + released_set["spike"] * TEST_STRIDE / frames * (canvas.size["width"] - 70)
    red_top = _js(browser, """
        const c = arguments[0], dpr = window.devicePixelRatio || 1;
        const x = Math.round(arguments[1] * dpr), h = c.height;
        const img = c.getContext('2d').getImageData(x - 3, 0, 7, Math.round(h * 0.6)).data;
        for (let i = 0; i < img.length; i += 4) {
          if (img[i] > 150 && img[i + 1] < 100 && img[i + 2] < 100) return (i / 4 / 7) / dpr;
        }
        return null;""", canvas, x)
    assert red_top is not None and red_top < 8 + 0.1 * 140  # within the top tenth of the plot
    # the timeline is a cursor without a video: click, n / p, in frames
    clicked, pixel = _click_timeline(browser, 0.5)  # a pixel is 30 snippets here
    assert abs(_now(browser) - clicked) < max(TEST_STRIDE, pixel)
    assert _playhead(browser) == pytest.approx(_now(browser), abs=1e-3)
    _js(browser, "tpwngViewer.player.seek(0)")
    _press(browser, "n")
    assert _now(browser) == pytest.approx(released_set["spike"] * TEST_STRIDE)
    _shot(browser, tmp_path, "released-features-page")
    assert _errors(browser) == []


def test_a_video_gone_since_leaves_its_timeline(browser, videos, tmp_path):
    """A page whose video cannot load (moved since, or the page opened inside a report) says
    so, and its timeline still works as a cursor."""
    video = tmp_path / "moved.mp4"
    shutil.copy(videos / "carphone_pristine.mp4", video)
    info = probe_video(video)
    write_manifest([ManifestRow("moved", str(video), "test", ["fighting"], [(30, 60)],
                                info.frames, info.fps, 176, 144)], tmp_path / "manifest.tsv")
    n = -(-info.frames // TEST_STRIDE)
    _write_scores(tmp_path / "scores.h5", {"moved": np.linspace(0, 1, n)}, {"moved": info.frames})
    assert main(["view", "--manifest", str(tmp_path / "manifest.tsv"), "--scores",
                 str(tmp_path / "scores.h5"), "--out", str(tmp_path / "viewer")]) == 0
    video.unlink()
    _open(browser, (tmp_path / "viewer" / "index.html").as_uri())
    _wait(browser, "return !!document.getElementById('no-video')")
    assert "could not be played here" in browser.find_element("id", "no-video").text
    _js(browser, "tpwngViewer.player.seek(0)")
    _press(browser, "N")
    assert _now(browser) == pytest.approx(30 / info.fps, abs=1e-3)
    assert _playhead(browser) == pytest.approx(30 / info.fps, abs=1e-3)
    browser.get_log("browser")  # the missing file's load error, expected here


@pytest.mark.slow
def test_the_demo_dag_writes_a_working_viewer(browser, tiny_local_run, tmp_path):
    page = tiny_local_run / "results/synthetic/viewer/index.html"
    from tpwng.data.manifest import read_manifest

    tests = [r for r in read_manifest(tiny_local_run / "data/synthetic/manifest.tsv")
             if r.split == "test"]
    _open(browser, page.as_uri())
    assert sorted(_js(browser, "return tpwngViewer.order()")) == sorted(r.video_id
                                                                         for r in tests)
    _wait_video(browser)  # the synthetic H.264 videos play by relative path
    _js(browser, "document.querySelector('video').currentTime = 1")
    _wait_video(browser)
    assert _playhead(browser) == pytest.approx(1, abs=1e-3)
    _shot(browser, tmp_path, "demo-dag-viewer")
    assert _errors(browser) == []
    # the page is in the report, under "Scores"
    report = tmp_path / "report.html"
    out = snakemake("--report", str(report), cwd=tiny_local_run,
                    config=tiny_local_run / "tiny.yaml", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = report.read_text()
    assert "results/synthetic/viewer/index.html" in text and '"Scores"' in text


# --------------------------------------------------------------------------- hostile names


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, sample_videos) -> Path:
    """Pages of videos named as scripts, with # ? and % (tests/workflow/test_hardening.py,
    case 1)."""
    from tests.workflow.test_hardening import score_hostile_names

    d = tmp_path_factory.mktemp("viewer-hostile")
    model = _train(d, "tcsal", {"span_scale": 3, "R": 2})
    return score_hostile_names(model, sample_videos["bigbuckbunny"], d)


_HOOK = "window.__pwned = undefined; window.alert = () => { window.__pwned = 'alert'; };"


def _click_runs_no_script(driver, url: str, element, files: Path, served: str | None) -> None:
    """Click `element`: no alert, no script run in the page, and where the browser went, the
    file the link names."""
    from urllib.parse import unquote, urlsplit

    from selenium.common.exceptions import NoAlertPresentException

    element.click()
    time.sleep(0.3)  # a javascript: URL runs after the click returns
    try:
        alert = driver.switch_to.alert
        text = alert.text
        alert.accept()
        pytest.fail(f"{url}: a link opened an alert ({text!r})")
    except NoAlertPresentException:
        pass
    now = driver.current_url
    if now == url:
        assert _js(driver, "return window.__pwned") is None, url
        return
    parts = urlsplit(now)
    assert parts.scheme == ("http" if served else "file") and not parts.query, now
    path = unquote(parts.path)
    target = files / path.removeprefix(served) if served else Path(path)
    assert target.is_file(), now


def test_links_of_hostile_names_run_no_script(browser, hostile):
    """Issue 23, case 1: clicking every link (and every index row) of pages of videos named
    `javascript:alert(document.domain);x.mp4`, `a#b?c.mp4`, ... runs no script and opens the
    file the link names, from file:// and served."""
    from urllib.parse import quote

    server = make_server(hostile.parent, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    clicked = 0
    try:
        for page in sorted(hostile.glob("*.html")):
            for url, served in ((page.as_uri(), None),
                                (base + quote(f"{hostile.name}/{page.name}"), "/")):
                _open(browser, url)
                count = _js(browser, "return document.querySelectorAll('a, img.thumb').length")
                assert count >= (3 if page.name != "index.html" else 8)
                for k in range(count):
                    _open(browser, url)
                    _js(browser, _HOOK)
                    element = browser.find_elements("css selector", "a, img.thumb")[k]
                    _click_runs_no_script(browser, url, element, hostile.parent, served)
                    clicked += 1
    finally:
        server.shutdown()
        server.server_close()
    assert clicked >= 2 * (4 * 3 + 8)
