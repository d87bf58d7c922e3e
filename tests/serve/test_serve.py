"""`tpwng serve`: many sources, one scorer; alerts to receivers; the live page; metrics.

Scores are checked against single-source streaming (`score_live`, as `tpwng score SOURCE
--stream`) and against offline scoring of the frames each source delivered.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.scoring.test_live import (
    _ffmpeg_server,
    _read_lines,
    _score_frames,
    _snippets,
    _threshold,
    _wait,
    needs_ffmpeg,
)
from tests.scoring.test_score_video import STRIDE, _train
from tests.scoring.test_viewer import browser  # noqa: F401 - the fixture: headless Chromium
from tpwng.cli import main
from tpwng.features.video import probe_video
from tpwng.loopback import free_port
from tpwng.scoring.inference import score_features
from tpwng.scoring.live import score_live
from tpwng.scoring.live_source import LiveOptions
from tpwng.scoring.score_video import ScoreOptions, snippet_features
from tpwng.scoring.scorer import load_scorer
from tpwng.serve import ServeConfigError, load_serve_config
from tpwng.serve.service import Service
from tpwng.serve.web import render_metrics, service_server

SECRET, TOKEN = "hunter2secret", "tok3n-abcdef"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("serve-model"), "tcsal", {"span_scale": 3, "R": 2})


@pytest.fixture(scope="module")
def scorer(model):
    return load_scorer(model, "cpu")


@pytest.fixture(scope="module")
def bunny_offline(scorer, sample_videos):
    video = sample_videos["bigbuckbunny"]
    feats = np.concatenate(list(snippet_features(scorer, video, probe_video(video))))
    return feats, score_features(scorer.model, feats)


# --------------------------------------------------------------------------- helpers


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "sources.yaml"
    path.write_text(text)
    return path


def _run(config: Path, scorer, out: Path, timeout: float = 120) -> tuple[Service, dict]:
    service = Service(load_serve_config(config), scorer, out)
    service.start()
    summary = service.wait(timeout)
    assert summary is not None, "the service did not end"
    return service, summary


@contextmanager
def _running(config: Path, scorer, out: Path) -> Iterator[tuple[Service, str]]:
    """The service and its HTTP server (any free port); stopped, outputs written, at exit."""
    service = Service(load_serve_config(config), scorer, out)
    server = service_server(service, port=0)
    web = threading.Thread(target=server.serve_forever, daemon=True)
    service.start()
    web.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        service.request_stop("test")
        service.wait(60)
        server.shutdown()
        server.server_close()


class _Receiver:
    """A local HTTP server that records the JSON POSTed to it (after ``delay`` s each)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.events: list[dict] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|'
                    r'\\.)*",?)*)\})? (\S+)$')


def _parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text format, strictly: every line a comment (HELP/TYPE) or a sample."""
    samples = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = tuple(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", m[1])
        assert m[1] in types or base in types, f"{m[1]} has no TYPE line"
        samples[(m[1], labels)] = float(m[3])
    return samples


# --------------------------------------------------------------------------- SOURCES.yaml


@pytest.mark.parametrize("text, message", [
    ("sources: [", "not valid YAML: line 1, column 11: expected the node content"),
    ("", "sources: the file is empty"),
    ("sources: []", "sources: expected a non-empty list of sources"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s'}\nfoo: 1\n", "top level: unknown key(s) foo"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s', colour: red}\n",
     "sources[0]: unknown key(s) colour"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s'}\n  - {name: a, url: 'rtsp://y/s'}\n",
     "sources[1].name: 'a' is already the name of sources[0]"),
    ("sources:\n  - {name: 'cam 1', url: 'rtsp://x/s'}\n", "sources[0].name: 'cam 1' is not a "
                                                          "source name"),
    ("sources:\n  - {name: ../x, url: 'rtsp://x/s'}\n", "is not a source name"),
    ("sources:\n  - {name: a}\n", "sources[0]: source 'a' needs exactly one of url, device or "
                                  "file, got none"),
    ("sources:\n  - {name: a, url: 'ftp://x/s'}\n", "sources[0].url: 'ftp://x/s' is not a "
                                                    "stream URL"),
    ("sources:\n  - {name: a, file: missing.mp4}\n", "missing.mp4: no such file"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s', loop: 2}\n", "only a file source can be "
                                                            "looped"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s'}\nalert_threshold: 2\n",
     "alert_threshold: expected a number >= 0 and <= 1, got 2"),
    ("sources:\n  - {name: a, url: 'rtsp://x/s'}\nreceivers: [{url: 'mqtt://h'}]\n",
     "receivers[0].url: 'mqtt://h' is not an http(s):// URL"),
    ("sources:\n  - name: a\n    url: 'rtsp://x/s'\n    url: 'rtsp://y/s'\n",
     "not valid YAML: line 4, column 5: key 'url' given twice"),
])
def test_bad_sources_yaml_one_clear_error_each(tmp_path, text, message):
    path = _config(tmp_path, text)
    with pytest.raises(ServeConfigError) as info:
        load_serve_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), info.value


def test_config_errors_never_show_credentials(tmp_path, capsys):
    url = f"rtsp://admin:{SECRET}@cam/s?token={TOKEN}"
    for text in (f"sources:\n  - {{name: a, url: '{url.replace('rtsp', 'ftp')}'}}\n",
                 f"sources:\n  - {{name: a, url: '{url}'}}\nreceivers: [{{url: '{url}'}}]\n",
                 f"sources:\n  - {{name: a, url: '{url}', timeout: -1}}\n",
                 f"sources:\n  - {{name: a, url: '{url}'}}\n  - {{name: a, url: '{url}'}}\n",
                 f"sources:\n  - name: a\n    url: {url}\n  bad indent\n"):
        rc = main(["serve", str(_config(tmp_path, text)), "--model", str(tmp_path / "m.pt")])
        _, err = capsys.readouterr()
        assert rc == 2 and err.startswith("tpwng serve: error: ") and err.count("\n") == 1, err
        assert SECRET not in err and TOKEN not in err


def test_defaults_and_overrides(tmp_path, sample_videos):
    video = sample_videos["bikes"]
    c = load_serve_config(_config(tmp_path, f"""
sources:
  - {{name: door, url: 'rtsp://cam/s', timeout: 3}}
  - {{name: demo, file: '{video}', loop: true, realtime: false, alert_threshold: 0.9}}
  - {{name: usb, device: /dev/video0}}
alert_threshold: 0.7
receivers: [{{url: 'http://hooks.local/x', retries: 1}}]
http: {{port: 9000}}
"""))
    door, demo, usb = c.sources
    assert (door.kind, door.timeout, door.alert_threshold, door.paced) == ("url", 3, 0.7, True)
    assert (demo.loop, demo.realtime, demo.alert_threshold, demo.paced) == (None, False, 0.9,
                                                                             False)
    assert (usb.kind, usb.timeout, usb.loop) == ("device", 10.0, 1)
    assert c.receivers[0].name == "receiver0" and c.receivers[0].retries == 1
    assert (c.port, c.bind, c.max_pending) == (9000, "127.0.0.1", 3)


# --------------------------------------------------------------------------- scoring


def test_scores_equal_single_source_streaming(scorer, sample_videos, bunny_offline, tmp_path):
    """Three files in one process, the encoder batched across them: each source's scores are
    `score_live`'s of that source alone (a looped file's: its frames played twice)."""
    videos = {n: sample_videos[v] for n, v in (("bunny", "bigbuckbunny"),
                                               ("phone", "carphone_pristine"),
                                               ("bikes", "bikes"))}
    config = _config(tmp_path, f"""
sources:
  - {{name: bunny, file: '{videos["bunny"]}', realtime: false}}
  - {{name: phone, file: '{videos["phone"]}', realtime: false, loop: 2}}
  - {{name: bikes, file: '{videos["bikes"]}', realtime: false}}
""")
    service, summary = _run(config, scorer, tmp_path / "serve")
    assert sum(n * c for n, c in service.batches.items()) == sum(s.scored
                                                                 for s in service.sources)
    assert max(service.batches) > 1  # snippets of several sources in one forward pass
    entries = {e["name"]: e for e in summary["videos"]}
    for name in ("bunny", "bikes"):
        alone = tmp_path / f"alone-{name}"
        lines: list[str] = []
        score_live(scorer, str(videos[name]), alone, ScoreOptions(stream=True), LiveOptions(),
                   emit=lines.append, notify=lambda m: None)
        want = _snippets([json.loads(x) for x in lines])
        got = _snippets(_read_lines(tmp_path / "serve" / f"{name}_live.jsonl"))
        assert [g["snippet"] for g in got] == [w["snippet"] for w in want]
        assert [g["start_frame"] for g in got] == [w["start_frame"] for w in want]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want],
                                   atol=1e-5, rtol=0)
        assert [g["class"] for g in got] == [w["class"] for w in want]
        assert entries[name]["frames"] == probe_video(videos[name]).frames
        (alone_csv,) = alone.glob("*_scores.csv")
        csv_alone = np.loadtxt(alone_csv, delimiter=",", skiprows=1)
        csv_serve = np.loadtxt(tmp_path / "serve" / f"{name}_scores.csv", delimiter=",",
                               skiprows=1)
        np.testing.assert_allclose(csv_serve, csv_alone, atol=2e-5, rtol=0)
    np.testing.assert_allclose(
        [g["score"] for g in _snippets(_read_lines(tmp_path / "serve" / "bunny_live.jsonl"))],
        bunny_offline[1], atol=1e-5, rtol=0)
    frames = probe_video(videos["phone"]).frames
    got = [g["score"] for g in _snippets(_read_lines(tmp_path / "serve" / "phone_live.jsonl"))]
    sequence = np.concatenate([np.arange(frames), np.arange(frames)])
    np.testing.assert_allclose(got, _score_frames(scorer, videos["phone"], sequence), atol=1e-5,
                               rtol=0)
    assert entries["phone"]["frames"] == 2 * frames
    assert json.loads((tmp_path / "serve" / "summary.json").read_text()) == summary


def test_a_scorer_that_cannot_keep_up_drops_snippets_by_the_rule(scorer, sample_videos,
                                                                  bunny_offline, tmp_path):
    """A paced source with one waiting snippet allowed, and an encoder slower than the
    source: snippets are skipped, counted and numbered in place; each run of scored snippets
    after a gap scores as a stream that began there."""
    video = sample_videos["bigbuckbunny"]
    config = _config(tmp_path, f"sources:\n  - {{name: bunny, file: '{video}'}}\n"
                               "max_pending: 1\n")
    service = Service(load_serve_config(config), scorer, tmp_path / "out")
    encode = scorer.encoder.encode

    def slow(x):
        time.sleep(0.8)  # > 2 snippets of 8 frames at 25 fps
        return encode(x)

    scorer.encoder.encode = slow
    try:
        service.start()
        summary = service.wait(120)
    finally:
        scorer.encoder.encode = encode
    lines = _snippets(_read_lines(tmp_path / "out" / "bunny_live.jsonl"))
    feats, _ = bunny_offline
    n = len(feats)
    assert [s["snippet"] for s in lines] == list(range(n))
    assert [s["start_frame"] for s in lines] == list(range(0, n * STRIDE, STRIDE))
    np.testing.assert_allclose([s["time_s"] for s in lines], np.arange(n) * STRIDE / 25.0)
    dropped = [s["snippet"] for s in lines if s.get("dropped")]
    assert dropped and len(dropped) == service.sources[0].counters.dropped_snippets
    assert summary["videos"][0]["dropped_snippets"] == len(dropped)
    scored = [i for i in range(n) if i not in dropped]
    runs, start = [], scored[0]
    for a, b in zip(scored, [*scored[1:], None], strict=True):
        if b != a + 1:
            runs.append((start, a + 1))
            start = b
    by_index = {s["snippet"]: s["score"] for s in lines if not s.get("dropped")}
    for a, b in runs:
        np.testing.assert_allclose([by_index[i] for i in range(a, b)],
                                   score_features(scorer.model, feats[a:b]), atol=1e-5, rtol=0)
    csv = np.loadtxt(tmp_path / "out" / "bunny_scores.csv", delimiter=",", skiprows=1)
    assert np.isnan(csv[:, 2]).sum() == sum(s["frames"] for s in lines if s.get("dropped"))


# --------------------------------------------------------------------------- alerts


def test_alerts_reach_a_receiver_while_one_is_down_and_one_is_slow(scorer, sample_videos,
                                                                    bunny_offline, tmp_path):
    video = sample_videos["bigbuckbunny"]
    x = _threshold(bunny_offline[1])
    good, slow = _Receiver(), _Receiver(delay=3.0)
    down = f"http://127.0.0.1:{free_port()}/hook?key={TOKEN}"
    config = _config(tmp_path, f"""
sources:
  - {{name: bunny, file: '{video}', realtime: false, alert_threshold: {x}}}
  - {{name: bunny2, file: '{video}', realtime: false}}
receivers:
  - {{name: good, url: '{good.url}'}}
  - {{name: down, url: '{down}', retries: 2, backoff: 0.05}}
  - {{name: slow, url: '{slow.url}', timeout: 0.3, retries: 1, backoff: 0.05}}
""")
    t0 = time.monotonic()
    try:
        service, _ = _run(config, scorer, tmp_path / "out")
    finally:
        good.close()
        slow.close()
    took = time.monotonic() - t0
    logged = _read_lines(tmp_path / "out" / "alerts.jsonl")
    lines = _read_lines(tmp_path / "out" / "bunny_live.jsonl")
    assert logged == [a for a in lines if a["event"].startswith("alert")]
    assert logged and logged[0]["event"] == "alert_start" and logged[-1]["event"] == "alert_end"
    assert all(a["source"] == "bunny" and "class" in a for a in logged)
    assert good.events == logged
    counters = {s.spec.name: s.counters for s in service.senders}
    assert (counters["good"].sent, counters["good"].failed) == (len(logged), 0)
    assert (counters["down"].sent, counters["down"].failed) == (0, len(logged))
    assert counters["down"].retries == 2 * len(logged)
    assert counters["down"].last_error == "connection refused"
    assert counters["slow"].failed >= 1 and "no answer within 0.3 s" in \
        counters["slow"].last_error
    # scoring went on as without receivers: the scores, and no snippet waited on a POST
    got = _snippets(lines)
    np.testing.assert_allclose([s["score"] for s in got], bunny_offline[1], atol=1e-5, rtol=0)
    assert max(s["latency_s"] for s in got) < 2.0
    assert took < 60
    assert TOKEN not in (tmp_path / "out" / "bunny_live.jsonl").read_text()


# --------------------------------------------------------------------------- operations


@needs_ffmpeg
def test_a_killed_source_reconnects_while_the_others_go_on(scorer, sample_videos, tmp_path):
    video = sample_videos["bigbuckbunny"]
    port, dead = free_port(), free_port()
    secret_url = f"http://admin:{SECRET}@127.0.0.1:{dead}/cam?token={TOKEN}"
    config = _config(tmp_path, f"""
sources:
  - {{name: cam, url: 'http://127.0.0.1:{port}', timeout: 5}}
  - {{name: loop, file: '{video}', loop: true}}
  - {{name: never, url: '{secret_url}', timeout: 1}}
backoff_max: 0.5
alert_threshold: 0
""")
    out = tmp_path / "out"
    cam_jsonl, loop_jsonl = out / "cam_live.jsonl", out / "loop_live.jsonl"
    with _running(config, scorer, out) as (service, base):
        with _ffmpeg_server(video, port) as server:
            _wait(lambda: len(_snippets(_read_lines(cam_jsonl))) >= 4, 60, "four cam snippets")
            server.kill()
            killed = time.monotonic()
        _wait(lambda: service.sources[0].counters.status == "reconnecting", 30,
              "the cam's drop noticed")
        cut = service.sources[0].counters.frames
        loop_before = len(_snippets(_read_lines(loop_jsonl)))
        time.sleep(1.5)  # nothing serves the cam meanwhile
        assert len(_snippets(_read_lines(loop_jsonl))) > loop_before  # the others go on
        with _ffmpeg_server(video, port):
            _wait(lambda: any(x["event"] == "reconnected" for x in _read_lines(cam_jsonl)), 30,
                  "the cam reconnected")
            _wait(lambda: service.sources[0].counters.frames > cut + 40, 30,
                  "the cam's frames after the reconnect")
        assert time.monotonic() - killed < 60
        status, text = _get(f"{base}/metrics")
        assert status == 200
        metrics = _parse_metrics(text)
        status, health = _get(f"{base}/health")
        state = json.loads(_get(f"{base}/api/state")[1])
        page = _get(f"{base}/")[1]
    assert status == 200 and json.loads(health)["status"] == "ok"
    assert json.loads(health)["sources"]["never"] == "connecting"

    def m(name: str, **labels: str) -> float:
        return metrics[(name, tuple(labels.items()))]

    assert m("tpwng_source_reconnects_total", source="cam") >= 1
    assert m("tpwng_source_frames_decoded_total", source="cam") > cut + 40
    assert m("tpwng_source_snippets_scored_total", source="loop") > 0
    assert m("tpwng_source_up", source="never") == 0
    assert m("tpwng_source_frames_decoded_total", source="never") == 0
    assert m("tpwng_source_snippets_dropped_total", source="loop") == 0
    p95 = m("tpwng_source_latency_seconds", source="loop", quantile="0.95")
    assert 0 <= p95 < 5
    assert m("tpwng_encoder_batch_size_count") >= 1
    assert m("tpwng_process_cpu_seconds_total") > 0
    never = next(s for s in state["sources"] if s["name"] == "never")
    assert never["status"] == "connecting" and "connection refused" in never["last_error"]
    # after the stop: each source's outputs as --stream writes them, the cam's frames in order
    cam = _read_lines(cam_jsonl)
    frames = cam[-1]["frames"]
    assert cam[-1]["event"] == "end" and cam[-1]["ended_by"] == "test" and frames > cut + 40
    assert next(x["frame"] for x in cam if x["event"] == "reconnecting") == cut
    sequence = np.concatenate([np.arange(cut), np.arange(frames - cut)])
    np.testing.assert_allclose([s["score"] for s in _snippets(cam)],
                               _score_frames(scorer, video, sequence), atol=1e-5, rtol=0)
    for name in ("cam", "loop"):
        assert (out / f"{name}_scores.csv").exists() and (out / f"{name}_intervals.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [v["name"] for v in summary["videos"]] == ["cam", "loop", "never"]
    assert "connection refused" in summary["videos"][2]["error"]
    # no credentials anywhere: outputs, metrics, state, page
    shown = [text, health, json.dumps(state), page] + [p.read_text() for p in out.iterdir()
                                                       if p.suffix in (".json", ".jsonl",
                                                                       ".csv")]
    assert not any(SECRET in t or TOKEN in t for t in shown)
    assert "http://admin:***@127.0.0.1" in json.dumps(state)


@needs_ffmpeg
def test_sigterm_drains_and_writes_each_sources_outputs(model, sample_videos, tmp_path):
    video = sample_videos["bigbuckbunny"]
    config = _config(tmp_path, f"sources:\n  - {{name: a, file: '{video}', loop: true}}\n"
                               f"  - {{name: b, file: '{video}', loop: true}}\n"
                               "http: {port: 0}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tpwng.cli", "serve", str(config), "--model",
                             str(model), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: all(len(_snippets(_read_lines(out / f"{n}_live.jsonl"))) >= 3
                          for n in "ab"), 90, "three snippets of each source")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM; outputs in" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    for entry in summary["videos"]:
        lines = _read_lines(out / f"{entry['name']}_live.jsonl")
        assert lines[-1]["event"] == "end" and lines[-1]["ended_by"] == "SIGTERM"
        assert entry["frames"] == lines[-1]["frames"] >= 3 * STRIDE
        assert entry["ended_by"] == "SIGTERM"
        csv = np.loadtxt(out / f"{entry['name']}_scores.csv", delimiter=",", skiprows=1)
        assert len(csv) == entry["frames"] and not np.isnan(csv).any()


# --------------------------------------------------------------------------- the live page


def test_live_page_in_chromium(browser, scorer, sample_videos, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    video = sample_videos["bigbuckbunny"]
    config = _config(tmp_path, f"sources:\n  - {{name: one, file: '{video}', loop: true}}\n"
                               f"  - {{name: two, file: '{video}', loop: true}}\n"
                               "alert_threshold: 0\n")
    with _running(config, scorer, tmp_path / "out") as (_, base):
        browser.get(f"{base}/")
        _wait(lambda: browser.execute_script("return !!(window.tpwngServe && "
                                             "tpwngServe.ready)"), 30, "the page ready")
        seen = browser.execute_script("return tpwngServe.snippets")
        _wait(lambda: browser.execute_script("return tpwngServe.snippets") >= seen + 4, 30,
              "four snippets arriving on the page")
        cards = browser.find_elements(By.CSS_SELECTOR, ".source")
        assert sorted(c.get_attribute("data-name") for c in cards) == ["one", "two"]
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#alerts li.alert_start"), 30,
              "an alert listed")
        assert "alerting" in cards[0].get_attribute("class")
        recent = browser.execute_script("return tpwngServe.sources.two.recent.length")
        assert recent >= 2
        cards[1].click()
        _wait(lambda: browser.execute_script(
            "const i = document.getElementById('detail-frame'); return !document.getElementById"
            "('detail').hidden && i.complete && i.naturalWidth > 0"), 20, "the detail opened")
        assert browser.find_element(By.ID, "detail-name").text.startswith("two (")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_metric_values_are_numbers_or_nan(scorer, sample_videos, tmp_path):
    """Before any snippet the latency quantiles are NaN, which Prometheus reads."""
    video = sample_videos["bigbuckbunny"]
    config = _config(tmp_path, f"sources:\n  - {{name: a, file: '{video}'}}\n")
    service = Service(load_serve_config(config), scorer, tmp_path / "out")
    metrics = _parse_metrics(render_metrics(service))
    assert math.isnan(metrics[("tpwng_source_latency_seconds",
                               (("source", "a"), ("quantile", "0.5")))])
    assert metrics[("tpwng_source_frames_decoded_total", (("source", "a"),))] == 0
