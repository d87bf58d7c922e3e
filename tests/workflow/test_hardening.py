"""Hardening: hostile names, URLs, files and full disks, tried as an attacker and as
a careless user would. Each case must end in one clear error naming the file or value, or be
served / linked / written safely; nothing may print a credential or run a page's script.

Case 1's browser test (clicking every link of such a page) is in tests/scoring/test_viewer.py,
beside the other browser tests; case 4 (dataset names in the DAG) in
tests/workflow/test_workflow.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import h5py
import numpy as np
import pytest

from tests.helpers import faults
from tests.scoring.test_score_video import _train
from tpwng.cli import main
from tpwng.data.datasets import (
    DatasetError,
    VideoEntry,
    parse_int,
    parse_ucf_temporal_annotation,
    parse_xd_annotation,
)
from tpwng.data.manifest import build_manifest
from tpwng.evaluate.finegrained import parse_xd_multiclass_annotation
from tpwng.evaluate.scores_file import MAX_SCORE_VALUES, read_scores
from tpwng.features.released import import_released, load_npy, npy_header, released_probe
from tpwng.features.store import StoreError
from tpwng.loopback import free_port
from tpwng.redact import redact_text, redact_url
from tpwng.scoring.live_source import display_source, ffmpeg_url, is_live_source, source_stem
from tpwng.scoring.viewer import href
from tpwng.scoring.viewer_server import make_server

REPO = Path(__file__).resolve().parents[2]
# case 1's names: a script as a link, a fragment and a query, a percent sign
HOSTILE = ["javascript:alert(document.domain);x.mp4", "javascript:window.__pwned=1;y.mp4",
           "a#b?c.mp4", "100%25%.mp4"]
SECRETS = ("Pa#ss99", "ss99", "TOKEN123", "SECRET1", "SECRET2")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("hardening-model"), "tcsal", {"span_scale": 3, "R": 2})


@pytest.fixture(scope="module")
def served_video(tmp_path_factory, sample_videos):
    """bigbuckbunny.mp4 (132 frames) served over loopback HTTP by the viewer's server."""
    d = tmp_path_factory.mktemp("served")
    shutil.copy(sample_videos["bigbuckbunny"], d / "bbb.mp4")
    server = make_server(d, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", d / "bbb.mp4"
    server.shutdown()
    server.server_close()


def score_hostile_names(model: Path, video: Path, root: Path) -> Path:
    """`tpwng score --html` of a folder of copies of `video` named as in HOSTILE; the output
    folder."""
    videos, out = root / "videos", root / "out"
    videos.mkdir(parents=True)
    for name in HOSTILE:
        shutil.copy(video, videos / name)
    assert main(["score", str(videos), "--model", str(model), "--out", str(out), "--html",
                 "--device", "cpu"]) == 0
    return out


def page_data(page: Path) -> dict:
    m = re.search(r'<script id="tpwng-data" type="application/json">(.*?)</script>',
                  page.read_text(), re.S)
    return json.loads(m[1])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error: " in line]


# --------------------------------------------------------------------------- 1. links


def test_case1_every_href_is_the_quoted_relative_file(model, sample_videos, tmp_path):
    """Every link the pages write, for names that are a script, hold # ? or %, is the
    percent-encoded relative path of that very file: no scheme, query or fragment."""
    out = score_hostile_names(model, sample_videos["bigbuckbunny"], tmp_path)
    pages = sorted(out.glob("*.html"))
    assert len(pages) == len(HOSTILE) + 1  # a page per video and index.html
    hrefs: list[tuple[Path, str]] = []
    for page in pages:
        data = page_data(page)
        assert "href=" not in page.read_text().split('<script id="tpwng-data"')[0].replace(
            'href="data:,"', "")  # no other link in the page's own markup
        for v in data["videos"]:
            hrefs += [(page, v[k]) for k in ("src", "page", "thumb") if v.get(k)]
        hrefs += [(page, f["href"]) for f in data.get("files", [])]
        if page.name != "index.html":
            stem = page.stem
            assert {f["name"] for f in data["files"]} == {
                f"{stem}_scores.csv", f"{stem}_scores.png", f"{stem}_intervals.json"}
    assert len(hrefs) >= 6 * len(HOSTILE)
    for page, link in hrefs:
        assert re.fullmatch(r"[A-Za-z0-9_.~%-][A-Za-z0-9_.~/%-]*", link), link  # a quoted path
        target = (page.parent / unquote(link)).resolve()
        assert target.is_file(), (page.name, link)
        rel = os.path.relpath(target, page.parent.resolve())
        assert link == quote(Path(rel).as_posix(), safe="/")
    assert href("javascript:alert(1).mp4") == "javascript%3Aalert%281%29.mp4"
    assert href("a#b?c.mp4") == "a%23b%3Fc.mp4" and href("%") == "%25"
    assert href("../videos/x y.mp4") == "../videos/x%20y.mp4"
    with pytest.raises(ValueError, match="relative path"):
        href("/etc/passwd")


# --------------------------------------------------------------------------- 2. full disk

def _run_cli_to(stdout: str, *args) -> None:
    """`faults.run_cli` with standard output sent to the file `stdout`."""
    fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    faults.run_cli(*args)


def _live_under_limit(url: str, model: Path, out: Path, limit: int | None, cwd: Path,
                      stdout: str = os.devnull) -> tuple[int, str]:
    """`tpwng score URL --stream` in a process whose files may not grow past `limit` bytes."""
    ctx = faults.cli_context()
    log = cwd / f"log-{limit}.txt"
    p = ctx.Process(target=_run_cli_to, args=(stdout, [
        "score", url, "--model", str(model), "--out", str(out), "--stream", "--threads", "1"],
        str(log), str(cwd), limit))
    p.start()
    p.join(240)
    assert p.exitcode is not None, "the command did not finish"
    return p.exitcode, log.read_text()


def test_case2_full_disk_during_live_scoring(model, served_video, tmp_path):
    """A file size limit (RLIMIT_FSIZE, EFBIG: a disk that fills up) while a live source is
    scored: one error line listing what was and was not written, whole JSON lines only, and
    every output that fits written whole."""
    host, _ = served_video
    url = f"http://{host}/bbb.mp4"
    full = tmp_path / "full"
    code, log = _live_under_limit(url, model, full, None, tmp_path)
    assert code == 0, log[-2000:]
    sizes = {p.name: p.stat().st_size for p in full.iterdir()}
    jsonl = "127.0.0.1_" + host.split(":")[1] + "_bbb_live.jsonl"
    # a limit the lines file crosses, with room for the intervals and the summary
    limit = max(sizes[n] for n in sizes if n.endswith("_intervals.json") or n == "summary.json")
    limit = max(limit + 64, sizes[jsonl] // 2)
    assert sizes[jsonl] > limit
    out = tmp_path / "out"
    code, log = _live_under_limit(url, model, out, limit, tmp_path)
    assert code == 2, log[-3000:]
    errors = _error_lines(log)
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    error = errors[0]
    assert "File too large: the disk is full or a file size limit or quota was reached" in error
    assert f"{out / jsonl} took " in error
    text = (out / jsonl).read_bytes()
    assert text.endswith(b"\n") and len(text) <= limit
    lines = [json.loads(line) for line in text.decode().splitlines()]  # all whole
    assert lines[0]["event"] == "start"
    assert int(error.split(f"{jsonl} took ")[1].split()[0]) == len(lines)
    written = error.split("written: ")[-1]
    not_written = error.split("not written: ")[1].split("; written: ")[0]
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["videos"][0]
    assert set(entry["outputs"]) >= {"intervals", "live"}
    for name in sizes:
        path = out / name
        if name == jsonl:
            continue
        if not path.exists():
            assert str(path) in not_written and str(path) not in written, name
            continue
        assert str(path) in written and str(path) not in not_written, name
        if name.endswith(".csv"):  # whole: a row per frame scored
            assert len(path.read_text().splitlines()) == entry["frames"] + 1
        elif name.endswith(".json"):
            json.loads(path.read_text())
    assert not any(p.name.endswith(".png") for p in out.iterdir())  # 30 kB: over the limit
    snippets = [x for x in lines if x["event"] == "snippet"]
    assert entry["frames"] >= len(snippets) * 8  # scored on past the last line written
    # standard output sent to a file on the same full disk: the same one error, naming it
    code, log = _live_under_limit(url, model, tmp_path / "out2", limit, tmp_path,
                                  str(tmp_path / "stdout.jsonl"))
    assert code == 2 and len(_error_lines(log)) == 1 and "Traceback" not in log, log[-3000:]
    assert "standard output took only the first" in _error_lines(log)[0]
    assert (tmp_path / "out2" / "summary.json").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no temporary file left


# --------------------------------------------------------------------------- 3. credentials


@pytest.mark.parametrize(("url", "shown"), [
    ("http://admin:Pa#ss99@127.0.0.1:9/x.ts", "http://admin:***@127.0.0.1:9/x.ts"),
    ("rtsp://admin:p?a/s@s@cam:554/live", "rtsp://admin:***@cam:554/live"),
    ("http://TOKEN123@cam/live.m3u8", "http://***@cam/live.m3u8"),
    ("https://cam/live.m3u8?token=SECRET1&sig=SECRET2&hd", "https://cam/live.m3u8?token=***&sig=***&***"),
    ("HTTPS://u:SECRET1@cam/x?key=SECRET2#frag", "HTTPS://u:***@cam/x?key=***#***"),
    ("udp://@:1234", "udp://@:1234"),
    ("http://cam/x", "http://cam/x"),
    ("/dev/video0", "/dev/video0"),
    ("clip.mp4", "clip.mp4"),
])
def test_case3_redacted_forms(url, shown):
    assert redact_url(url) == shown == display_source(url)
    message = f"cannot open {url}: {json.dumps({'source': url})}"
    assert all(s not in redact_text(message, url) for s in SECRETS)
    assert redact_text(message, url).startswith(f"cannot open {shown}: ")


def test_case3_no_credential_in_any_message_or_file(model, served_video, tmp_path, capsys):
    """A user-only credential and query tokens, scored live: nowhere on stdout, stderr, in the
    JSON lines, the intervals, the summary or a file name."""
    host, _ = served_video
    url = f"http://TOKEN123@{host}/bbb.mp4?token=SECRET1&sig=SECRET2"
    out = tmp_path / "out"
    assert main(["score", url, "--model", str(model), "--out", str(out), "--stream",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    shown = f"http://***@{host}/bbb.mp4?token=***&sig=***"
    assert shown in captured.err and json.loads(captured.out.splitlines()[0])["source"] == shown
    texts = [captured.out, captured.err] + [p.read_text() for p in out.glob("*")
                                            if p.suffix != ".png"]
    names = [p.name for p in out.iterdir()]
    assert len(names) == 5  # lines, CSV, PNG, intervals, summary
    for secret in SECRETS:
        assert not any(secret in t for t in texts + names), secret
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == shown and summary["videos"][0]["video"] == shown
    # a password that holds '#': the error names the URL, masked
    bad = "http://admin:Pa#ss99@127.0.0.1:9/x.ts"
    assert main(["score", bad, "--model", str(model), "--out", str(out), "--stream"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err)[0].startswith("tpwng score: error: http://admin:***@127.0.0.1:9/x.ts")
    assert not any(s in err for s in SECRETS)


# --------------------------------------------------------------------------- 5. bad files


def _npy_cases() -> dict:
    def saved(a):
        return lambda p: np.save(p, a)

    def truncated(p):
        np.save(p, np.ones((30, 512), np.float32))
        os.truncate(p, 1000)

    return {
        "garbage header": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{garbage: !!}  \n"),
                           "not a readable .npy array"),
        "not npy at all": (lambda p: p.write_bytes(os.urandom(600)), "not a readable .npy"),
        "empty file": (lambda p: p.write_bytes(b""), "not a readable .npy array"),
        "truncated data": (truncated, "truncated"),
        "string dtype": (saved(np.array([["a", "b"]])), "dtype <U1 is not a feature dtype"),
        "complex64": (saved(np.ones((3, 512), np.complex64)), "dtype complex64 is not a feature"),
        "zero snippets": (saved(np.ones((0, 512), np.float32)), "at least one snippet"),
        "one dimension": (saved(np.ones(512, np.float32)), "expected [snippets, dim]"),
    }


@pytest.mark.parametrize("case", list(_npy_cases()))
def test_case5_malformed_npy_is_one_error_naming_the_file(tmp_path, case):
    make, text = _npy_cases()[case]
    path = tmp_path / "v1__0.npy"
    make(path)
    for read in (npy_header, load_npy):
        with pytest.raises(StoreError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: ") and text in str(info.value)


def test_case5_manifest_collects_every_bad_npy_in_one_message(tmp_path):
    d = tmp_path / "released"
    d.mkdir()
    cases = _npy_cases()
    entries = [VideoEntry("good", "/x/good.mp4", "train", ["normal"], [])]
    np.save(d / "good__0.npy", np.ones((4, 512), np.float32))
    for k, (make, _) in enumerate(cases.values()):
        make(d / f"bad{k}__0.npy")
        entries.append(VideoEntry(f"bad{k}", f"/x/bad{k}.mp4", "train", ["normal"], []))
    settings = {"name": "r", "clip": {"model": "ViT-B-16"},
                "extraction": {"stride": 16, "source": "released", "released_dir": str(d)}}
    with pytest.raises(StoreError) as info:
        build_manifest(entries, released_probe(settings), progress=False)
    message = str(info.value)
    assert message.startswith(f"{len(cases)} of {len(entries)} videos cannot be used: ")
    for k in range(min(5, len(cases))):
        assert str(d / f"bad{k}__0.npy") in message
    assert f"and {len(cases) - 5} more" in message
    # the import refuses them too, naming the file, should a manifest list them
    rows = build_manifest(entries[:1], released_probe(settings), progress=False)
    np.save(d / "good__1.npy", np.ones((4, 512), np.complex64))
    with pytest.raises(StoreError, match=re.escape(f"{d / 'good__1.npy'}: dtype complex64")):
        import_released(rows, settings, tmp_path / "r.h5")


def _scores_file(path: Path, **datasets) -> Path:
    """A scores file of video `v` (20 frames, stride 16) with `datasets` replacing its arrays
    (unsealed: read unchecked, as files written before the seal are; one could forge a seal)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(dataset="toy", model="m.pt", weights="w", stride=16, test_crop=0,
                       order="v")
        arrays = {"frames": np.zeros(20, np.float32), "snippets": np.zeros(2, np.float32)}
        for group in ("frames", "snippets"):
            g = f.create_group(group)
            spec = datasets.get(group, arrays[group])
            if isinstance(spec, dict):
                g.create_dataset("v", **spec)
            else:
                g["v"] = spec
    return path


@pytest.mark.parametrize(("case", "text"), [
    ("garbage", "not a readable HDF5 file"),
    ("strings", "expected 1-D floats"),
    ("2-D", "expected 1-D floats"),
    ("other length", "has 19 values where 20 are expected"),
    ("no order", "no 'order' attribute"),
    ("gzip 1e11", f"declares 100,000,000,000 values (more than {MAX_SCORE_VALUES:,})"),
])
def test_case5_malformed_scores_file_given_to_view(tmp_path, capsys, case, text):
    from tpwng.data.manifest import ManifestRow, write_manifest

    write_manifest([ManifestRow("v", "/x/v.mp4", "test", ["normal"], [], 20, float("nan"), 0,
                                0, "none")], tmp_path / "manifest.tsv")
    path = tmp_path / "scores.h5"
    if case == "garbage":
        path.write_bytes(os.urandom(4096))
    elif case == "strings":
        _scores_file(path, frames=np.array([b"x"] * 20))
    elif case == "2-D":
        _scores_file(path, frames=np.zeros((20, 2), np.float32))
    elif case == "other length":
        _scores_file(path, frames=np.zeros(19, np.float32))
    elif case == "no order":
        _scores_file(path)
        with h5py.File(path, "r+") as f:
            del f.attrs["order"]
    else:  # 373 GiB declared in a file of a few kB
        _scores_file(path, frames={"shape": (10**11,), "dtype": "f4", "chunks": (1 << 20,),
                                   "compression": "gzip"})
        assert path.stat().st_size < 100_000
    t0 = time.monotonic()
    code = main(["view", "--manifest", str(tmp_path / "manifest.tsv"), "--scores", str(path),
                 "--out", str(tmp_path / "viewer")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 30
    assert _error_lines(err) == [line for line in err.splitlines() if line.strip()][-1:]
    assert _error_lines(err)[0].startswith(f"tpwng view: error: {path}") and text in err, err
    if case == "gzip 1e11":
        with pytest.raises(StoreError, match="declares"):
            read_scores(path)  # without the manifest, the cap alone


# --------------------------------------------------------------------------- 6. the server


@pytest.fixture
def site(tmp_path):
    """A served folder: a page, a video, a dotfile, a folder without an index, links inside
    and outside."""
    d = tmp_path / "site"
    (d / "sub").mkdir(parents=True)
    (d / "index.html").write_text("<p>index</p>")
    (d / "video.mp4").write_bytes(bytes(range(256)) * 40)
    (d / ".secret").write_text("hidden")
    (d / "sub" / "notes.txt").write_text("notes")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the served folder")
    (d / "leak.txt").symlink_to(outside)
    (d / "etc").symlink_to("/etc")
    (d / "inner.mp4").symlink_to(d / "video.mp4")
    server = make_server(d, 0, timeout=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield d, server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, {k.lower(): v for k, v in r.getheaders()}


def test_case6_server_refuses_what_it_must_not_serve(site, capsys):
    d, port = site
    data = (d / "video.mp4").read_bytes()
    huge = "9" * 5000  # past Python's 4,300-digit int() limit
    status, _, h = _get(port, "/video.mp4", {"Range": f"bytes={huge}-"})
    assert status == 416 and h["content-range"] == f"bytes */{len(data)}"
    status, body, _ = _get(port, "/video.mp4", {"Range": f"bytes=10-{huge}"})
    assert status == 206 and body == data[10:]
    status, body, _ = _get(port, "/video.mp4", {"Range": f"bytes=-{huge}"})
    assert status == 206 and body == data
    for path in ("/video.mp4%00", "/%00", "/vid%0aeo.mp4", "/%ff%fe.mp4"):
        assert _get(port, path)[0] == 400, path
    for path in ("/leak.txt", "/etc/passwd", "/.secret", "/%2esecret", "/sub/",
                 "/../outside.txt", "/%2e%2e/outside.txt", "/sub/../../outside.txt"):
        status, body, _ = _get(port, path)
        assert status == 404 and b"outside" not in body and b"notes.txt" not in body, path
    assert _get(port, "/sub")[0] == 301
    assert _get(port, "/")[1] == b"<p>index</p>"
    assert _get(port, "/inner.mp4")[1] == data  # a link inside the folder is served
    assert _get(port, "/sub/notes.txt")[1] == b"notes"
    assert "Traceback" not in capsys.readouterr().err


def test_case6_stalled_connections_hold_a_bounded_number_of_threads(site):
    d, port = site
    before = threading.active_count()
    stalled = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            stalled.append(s)
        time.sleep(0.5)
        assert threading.active_count() - before <= 32
        # each waits at most its 1 s; then a request is answered again
        t0 = time.monotonic()
        while True:
            try:
                if _get(port, "/index.html")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() - t0 < 20, "the server did not recover"
            time.sleep(0.2)
        assert threading.active_count() - before <= 32
    finally:
        for s in stalled:
            s.close()


def test_case6_busy_or_invalid_port_is_one_clear_error(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["view", "--serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"tpwng view: error: --bind 127.0.0.1 --port {port}: cannot "
                                 "serve there (Address already in use)"]
    for port in ("70000", "-1", "http"):
        with pytest.raises(SystemExit) as info:
            main(["view", "--serve", str(tmp_path), "--port", port])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "expected a port number 0-65535" in err and "Traceback" not in err


def test_case6_the_server_starts_without_torch(site):
    d, _ = site
    port = free_port()
    script = (
        "import json, sys, threading, time, urllib.request\n"
        "from tpwng.cli import main\n"
        "threading.Thread(target=main, args=(['view', '--serve', sys.argv[1], '--port', "
        "sys.argv[2]],), daemon=True).start()\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        body = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[2]}/', "
        "timeout=5).read()\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "rss = next(int(x.split()[1]) for x in open('/proc/self/status') "
        "if x.startswith('VmRSS'))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'body': body.decode(), "
        "'rss_mb': rss / 1024}))\n")
    r = subprocess.run([sys.executable, "-c", script, str(d), str(port)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["body"] == "<p>index</p>" and got["torch"] is False
    assert got["rss_mb"] < 200, got


# --------------------------------------------------------------------------- 7. scheme case


def test_case7_upper_case_scheme_is_the_url_it_is(model, served_video, tmp_path, capsys):
    host, _ = served_video
    assert is_live_source("HTTP://cam/x") and is_live_source("Rtsp://cam/x")
    assert ffmpeg_url("HTTP://User:Pw@Cam/X?a=B") == "http://User:Pw@Cam/X?a=B"
    assert source_stem("HTTP://127.0.0.1:80/live/x.ts") == "127.0.0.1_80_live_x"
    url = f"HTTP://{host}/bbb.mp4"
    assert main(["score", url, "--model", str(model), "--out", str(tmp_path / "o"),
                 "--stream", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"tpwng score: {url}: live at 25 fps" in captured.err
    assert json.loads(captured.out.splitlines()[0])["source"] == url
    refused = f"HTTP://127.0.0.1:{free_port()}/x.ts"
    assert main(["score", refused, "--model", str(model), "--out", str(tmp_path / "o2"),
                 "--stream"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"tpwng score: error: {refused}: cannot open: connection refused"]


# --------------------------------------------------------------------------- 8. numbers


@pytest.mark.parametrize("text", ["1_0", "+10", "١٠", "۱۰", "１０", " 10", "10 ", "1e3", "0x10",
                                  "", "-", "10.0", "9" * 5000])
def test_case8_only_plain_ascii_integers(tmp_path, text):
    with pytest.raises(DatasetError, match="digits 0-9"):
        parse_int(text, "f.txt:3")
    ucf = tmp_path / "ucf.txt"
    ucf.write_text(f"a.mp4  Fighting  5  9\nb.mp4  Fighting  {text or '?'}  30  -1  -1\n")
    xd = tmp_path / "xd.txt"
    xd.write_text(f"a.mp4 5 9\nb.mp4 {text or '?'} 30\n")
    multi = tmp_path / "multi.txt"
    multi.write_text(f"a.mp4 B1 5 9\nb.mp4 B1 {text or '?'} 30\n")
    for parse, path in ((parse_ucf_temporal_annotation, ucf), (parse_xd_annotation, xd),
                        (parse_xd_multiclass_annotation, multi)):
        if text.strip() != text and text.strip():
            continue  # whitespace around a field is the field separator of these files
        with pytest.raises(DatasetError, match=re.escape(f"{path}:2: ")):
            parse(path)


def test_case8_plain_numbers_still_parse(tmp_path):
    assert [parse_int(t, "x") for t in ("0", "10", "-1", "007")] == [0, 10, -1, 7]
    ucf = tmp_path / "ucf.txt"
    ucf.write_text("a.mp4  Fighting  5  9  -1  -1\n")
    assert parse_ucf_temporal_annotation(ucf) == {"a": ("Fighting", [(5, 9)])}


def test_case6_the_viewer_module_loads_without_torch_or_h5py():
    r = subprocess.run([sys.executable, "-c", "import sys, tpwng.scoring.viewer; "
                        "print('torch' in sys.modules, 'h5py' in sys.modules)"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.stdout.split() == ["False", "False"], r.stderr[-2000:]


@pytest.mark.parametrize("text", ["1_00", "+100", "١٠٠"])
def test_case8_manifest_numbers_too(tmp_path, text):
    from tpwng.data.manifest import ManifestRow, read_manifest, write_manifest

    path = tmp_path / "manifest.tsv"
    write_manifest([ManifestRow("v", "/x/v.mp4", "test", ["fighting"], [(5, 9)], 100, 25.0, 64,
                                48, "pyav")], path)
    assert read_manifest(path)[0].frames == 100
    path.write_text(path.read_text().replace("\t100\t", f"\t{text}\t"))
    with pytest.raises(DatasetError, match=re.escape(f"{path}:2: frames must be integers")):
        read_manifest(path)


def test_case2_json_lines_are_whole_or_absent(tmp_path, monkeypatch):
    """A write that stops mid-line (ENOSPC after half a line) is cut back to the last whole
    line; a partial last line left by an earlier run is dropped before appending."""
    import errno

    from tpwng.scoring import live

    path = tmp_path / "cam_live.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2, "cut')
    lines = live.JsonLines(path)
    lines.write('{"c": 3}')
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
    real = os.write

    def half_then_full(fd: int, data) -> int:
        if len(data) > 4:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(live.os, "write", half_then_full)
    lines.write('{"d": "a line the disk cannot hold"}')
    monkeypatch.setattr(live.os, "write", real)
    lines.write('{"e": 5}')  # no more lines once a write failed
    lines.close()
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
    assert lines.count == 1 and lines.failed.errno == errno.ENOSPC
    assert live._why(lines.failed) == ("No space left on device: the disk is full or a file "
                                       "size limit or quota was reached")
