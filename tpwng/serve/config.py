"""SOURCES.yaml: the sources `tpwng serve` scores, where alerts go, and how the service runs.

Every problem is one `ServeConfigError` naming the file and the entry (``sources[2].url``);
URLs in messages are redacted (`tpwng.redact`). A source's ``name`` becomes a file name and a
metric label, so it is limited to letters, digits, ``_`` and ``-``.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tpwng.redact import redact_text, split_url
from tpwng.scoring.live_source import DEVICE, LIVE_SCHEMES, is_live_source

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SOURCE_KINDS = ("url", "device", "file")


class ServeConfigError(ValueError):
    """SOURCES.yaml is malformed or holds a value that cannot be served."""


@dataclass(frozen=True)
class SourceSpec:
    """One source: exactly one of a stream URL, a V4L2 device or a file (looped for tests)."""

    name: str
    kind: str  # url | device | file
    location: str  # the URL, device path or file path as given (may hold credentials)
    loop: int | None = 1  # files: plays (None: for ever); streams and devices: 1
    realtime: bool = True  # files: paced at their frame rate (false: as fast as scored)
    alert_threshold: float | None = None
    timeout: float = 10.0

    @property
    def paced(self) -> bool:
        """Frames arrive at their own rate (a snippet the scorer cannot take is dropped);
        otherwise the reader waits for the scorer (a file read as fast as possible)."""
        return self.kind != "file" or self.realtime


@dataclass(frozen=True)
class ReceiverSpec:
    """An HTTP endpoint that alert events are POSTed to as JSON."""

    name: str
    url: str
    timeout: float = 2.0  # seconds per POST
    retries: int = 3  # tries after the first, with back-off
    backoff: float = 0.5  # seconds before the first retry; doubled each time
    queue: int = 256  # events waiting for this receiver; more are dropped (counted)


@dataclass(frozen=True)
class ServeConfig:
    """The whole file, defaults filled in."""

    path: Path
    sources: list[SourceSpec]
    receivers: list[ReceiverSpec] = field(default_factory=list)
    threshold: float = 0.5  # detected intervals in the outputs, as `tpwng score --threshold`
    min_length: float = 0.0
    max_pending: int = 3  # ready snippets per source waiting for the encoder
    max_batch: int = 64  # snippets per encoder forward pass
    backoff_max: float = 30.0  # longest wait between reconnect tries
    threads: int | None = None  # torch's CPU threads (None: the usable CPUs less one)
    bind: str = "127.0.0.1"
    port: int = 8080
    recent: int = 300  # snippets per source the live page shows

    def secrets(self) -> list[str]:
        """Every URL of the file (for masking their credentials wherever they appear)."""
        return [s.location for s in self.sources if s.kind == "url"] + \
            [r.url for r in self.receivers]

    def redact(self, text: str) -> str:
        return redact_text(text, *self.secrets())


def _defaults(cls: type) -> dict[str, Any]:
    """The field defaults of a spec class: the one place each of the file's defaults is set."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


TOP = {"sources", "receivers", "alert_threshold", "threshold", "min_length", "max_pending",
       "max_batch", "timeout", "backoff_max", "threads", "http", "recent"}
SOURCE_KEYS = {"name", *SOURCE_KINDS, "loop", "realtime", "alert_threshold", "timeout"}
RECEIVER_KEYS = {"name", "url", "timeout", "retries", "backoff", "queue"}
HTTP_KEYS = {"bind", "port"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_mapping)


class _Checker:
    """Typed reads of one file's values; each problem one error naming file and entry."""

    def __init__(self, path: Path, secrets: list[str]) -> None:
        self.path, self.secrets = path, secrets

    def fail(self, where: str, message: str) -> ServeConfigError:
        return ServeConfigError(redact_text(f"{self.path}: {where}: {message}", *self.secrets))

    def mapping(self, value: Any, where: str, keys: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        unknown = sorted(map(str, set(value) - keys))
        if unknown:
            raise self.fail(where, f"unknown key(s) {', '.join(unknown)} (known: "
                                   f"{', '.join(sorted(keys))})")
        return value

    def number(self, value: Any, where: str, low: float, high: float = math.inf,
               integer: bool = False, open_low: bool = False) -> float:
        ok = (isinstance(value, int) if integer else isinstance(value, int | float)) \
            and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if open_low else value >= low) and value <= high
        if not ok:
            kind = "a whole number" if integer else "a number"
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            upper = f" and <= {high:g}" if math.isfinite(high) else ""
            raise self.fail(where, f"expected {kind} {bound}{upper}, got {value!r}")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """Where and what, without the offending line's text (it may hold a password)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{path}: not valid YAML: {where}{problem}"


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and check SOURCES.yaml; a `ServeConfigError` for the first problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ServeConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ServeConfigError(redact_text(_yaml_error(path, exc))) from None
    secrets = _urls_in(data)
    c = _Checker(path, secrets)
    if data is None:
        raise c.fail("sources", "the file is empty; list at least one source")
    top = c.mapping(data, "top level", TOP)
    if "sources" not in top:
        raise c.fail("sources", "missing; list at least one source")
    raw = top["sources"]
    if not isinstance(raw, list) or not raw:
        raise c.fail("sources", "expected a non-empty list of sources")
    default_timeout = float(c.number(top.get("timeout", _defaults(SourceSpec)["timeout"]),
                                     "timeout", 0, open_low=True))
    default_alert = top.get("alert_threshold")
    if default_alert is not None:
        default_alert = float(c.number(default_alert, "alert_threshold", 0, 1))
    sources, names = [], {}
    for i, item in enumerate(raw):
        spec = _source(c, item, f"sources[{i}]", path.parent, default_alert, default_timeout)
        if spec.name in names:
            raise c.fail(f"sources[{i}].name", f"{spec.name!r} is already the name of "
                                               f"sources[{names[spec.name]}]; names must be "
                                               "unique (they name the output files)")
        names[spec.name] = i
        sources.append(spec)
    receivers = []
    raw_receivers = top.get("receivers") or []
    if not isinstance(raw_receivers, list):
        raise c.fail("receivers", "expected a list of receivers")
    for i, item in enumerate(raw_receivers):
        receivers.append(_receiver(c, item, f"receivers[{i}]", i))
    if len({r.name for r in receivers}) < len(receivers):
        raise c.fail("receivers", "two receivers have the same name")
    http = c.mapping(top.get("http") or {}, "http", HTTP_KEYS)
    threads = top.get("threads")
    top = _defaults(ServeConfig) | top
    http = {k: v for k, v in _defaults(ServeConfig).items() if k in HTTP_KEYS} | http
    return ServeConfig(
        path=path, sources=sources, receivers=receivers,
        threshold=float(c.number(top["threshold"], "threshold", 0, 1)),
        min_length=float(c.number(top["min_length"], "min_length", 0)),
        max_pending=int(c.number(top["max_pending"], "max_pending", 1, integer=True)),
        max_batch=int(c.number(top["max_batch"], "max_batch", 1, integer=True)),
        backoff_max=float(c.number(top["backoff_max"], "backoff_max", 0, open_low=True)),
        threads=None if threads is None else int(c.number(threads, "threads", 1, integer=True)),
        bind=c.text(http["bind"], "http.bind"),
        port=int(c.number(http["port"], "http.port", 0, 65535, integer=True)),
        recent=int(c.number(top["recent"], "recent", 1, 100000, integer=True)))


def _urls_in(data: Any) -> list[str]:
    """Every string of the file that is a URL (masked in messages before they are checked)."""
    found: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and split_url(x) is not None:
            found.append(x)

    walk(data)
    return found


def _source(c: _Checker, item: Any, where: str, base: Path, alert: float | None,
            timeout: float) -> SourceSpec:
    m = c.mapping(item, where, SOURCE_KEYS)
    if "name" not in m:
        raise c.fail(f"{where}.name", "missing; every source needs a name")
    name = m["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise c.fail(f"{where}.name", f"{name!r} is not a source name: 1-64 letters, digits, "
                                      "'_' or '-', starting with a letter or digit (it names "
                                      "files and metric labels)")
    kinds = [k for k in SOURCE_KINDS if k in m]
    if len(kinds) != 1:
        raise c.fail(where, f"source {name!r} needs exactly one of url, device or file, got "
                            f"{', '.join(kinds) or 'none'}")
    kind = kinds[0]
    location = c.text(m[kind], f"{where}.{kind}")
    if kind == "url" and not (split_url(location) and is_live_source(location)):
        raise c.fail(f"{where}.url", f"{location!r} is not a stream URL (schemes: "
                                     f"{', '.join(LIVE_SCHEMES)})")
    if kind == "device" and not DEVICE.fullmatch(location):
        raise c.fail(f"{where}.device", f"{location!r} is not a capture device (/dev/videoN)")
    if kind == "file":
        file = Path(location).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise c.fail(f"{where}.file", f"{file}: no such file")
        location = str(file)
    loop: int | None = 1
    if "loop" in m:
        if kind != "file":
            raise c.fail(f"{where}.loop", "only a file source can be looped")
        raw = m["loop"]
        loop = (None if raw is True else 1 if raw is False else
                int(c.number(raw, f"{where}.loop", 1, integer=True)))
    realtime = m.get("realtime", _defaults(SourceSpec)["realtime"])
    if not isinstance(realtime, bool):
        raise c.fail(f"{where}.realtime", f"expected true or false, got {realtime!r}")
    if "realtime" in m and kind != "file":
        raise c.fail(f"{where}.realtime", "only a file source's pace can be set")
    threshold = m.get("alert_threshold", alert)
    if threshold is not None:
        threshold = float(c.number(threshold, f"{where}.alert_threshold", 0, 1))
    return SourceSpec(name=name, kind=kind, location=location, loop=loop, realtime=realtime,
                      alert_threshold=threshold,
                      timeout=float(c.number(m.get("timeout", timeout), f"{where}.timeout", 0,
                                             open_low=True)))


def _receiver(c: _Checker, item: Any, where: str, index: int) -> ReceiverSpec:
    m = c.mapping(item, where, RECEIVER_KEYS)
    if "url" not in m:
        raise c.fail(f"{where}.url", "missing; a receiver is an http(s):// URL")
    url = c.text(m["url"], f"{where}.url")
    parts = split_url(url)
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.host:
        raise c.fail(f"{where}.url", f"{url!r} is not an http(s):// URL")
    name = m.get("name", f"receiver{index}")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise c.fail(f"{where}.name", f"{name!r} is not a receiver name: 1-64 letters, digits, "
                                      "'_' or '-'")
    m = _defaults(ReceiverSpec) | m
    return ReceiverSpec(
        name=name, url=url,
        timeout=float(c.number(m["timeout"], f"{where}.timeout", 0, open_low=True)),
        retries=int(c.number(m["retries"], f"{where}.retries", 0, 100, integer=True)),
        backoff=float(c.number(m["backoff"], f"{where}.backoff", 0)),
        queue=int(c.number(m["queue"], f"{where}.queue", 1, integer=True)))
