"""Credentials out of everything shown: URLs as messages, lines and output files name them.

A URL is split here by our own rule, not by `urllib.parse`, whose authority ends at the first
``#``, ``?`` or ``/`` and so leaves a password holding one of them in plain view. The
credentials run up to the *last* ``@`` that a host (and port) follows up to the end or a
``/``, ``?`` or ``#``; masking too much (a path or query holding ``name@host``) beats printing a
password. What is masked, the scheme (as given, upper case kept), host, port and path staying:

- a password (``user:***@``) and a user-only credential (``***@``: often a token);
- every query value (``?key=***``; a value-less item as ``***``): signed URLs carry their
  secrets under many names (``token``, ``sig``, ``X-Amz-Signature``, ``hdnts``...), and a
  list of names would miss some;
- the fragment (``#***``).

A secret in a path segment (``/live/TOKEN/stream``) cannot be told from a name and is kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[^/?#@\[\]:\s]*)(?::[^/?#@]*)?(?=[/?#]|$)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s\"'<>]*[^\s\"'<>:.,;)\]])?")
_MIN_SECRET = 3  # shorter credentials are not searched for in free text (too many false hits)


@dataclass(frozen=True)
class UrlParts:
    """A URL cut at its delimiters; each part as written (None: the delimiter is absent)."""

    scheme: str
    userinfo: str | None
    host: str
    port: str | None
    path: str
    query: str | None
    fragment: str | None


def split_url(url: str) -> UrlParts | None:
    """``scheme://[userinfo@]host[:port][/path][?query][#fragment]``; None if not a URL."""
    m = _SCHEME.match(url)
    if m is None:
        return None
    scheme, rest = url[: m.end() - 3], url[m.end():]
    userinfo = None
    for at in range(len(rest) - 1, -1, -1):
        if rest[at] == "@" and _HOST.match(rest, at + 1):
            userinfo, rest = rest[:at], rest[at + 1:]
            break
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i >= 0:
            end = min(end, i)
    hostport, rest = rest[:end], rest[end:]
    host, port = hostport, None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close >= 0 and hostport[close + 1:].startswith(":"):
            host, port = hostport[: close + 1], hostport[close + 2:]
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
    rest, hash_, fragment = rest.partition("#")
    path, mark, query = rest.partition("?")
    return UrlParts(scheme, userinfo, host, port, path, query if mark else None,
                    fragment if hash_ else None)


def _mask_query(query: str) -> str:
    items = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        items.append(item if not item else f"{key}={MASK}" if eq and value else
                     item if eq else MASK)
    return "&".join(items)


def redact_url(url: str) -> str:
    """`url` as given, its credentials, query values and fragment masked (see the module);
    anything that is not a URL (a file, a device) unchanged."""
    p = split_url(url)
    if p is None:
        return url
    out = f"{p.scheme}://"
    if p.userinfo is not None:
        user, colon, _ = p.userinfo.partition(":")
        out += (f"{user}:{MASK}@" if colon else f"{MASK}@" if p.userinfo else "@")
    out += p.host + (f":{p.port}" if p.port is not None else "") + p.path
    if p.query is not None:
        out += "?" + _mask_query(p.query)
    if p.fragment is not None:
        out += "#" + (MASK if p.fragment else "")
    return out


def secrets_of(url: str) -> list[str]:
    """What `redact_url` hides of `url`, longest first (for finding it in free text)."""
    p = split_url(url)
    if p is None:
        return []
    found: list[str] = []
    if p.userinfo:
        user, colon, password = p.userinfo.partition(":")
        found += [p.userinfo, password] if colon else [p.userinfo]
    if p.query:
        for item in p.query.split("&"):
            key, eq, value = item.partition("=")
            found.append(value if eq else key)
    if p.fragment:
        found.append(p.fragment)
    found = [s for s in found if len(s) >= _MIN_SECRET]
    return sorted(set(found), key=len, reverse=True)


def redact_text(text: str, *sources: str) -> str:
    """A message, a JSON line or a file's text with every URL in it redacted, and every secret
    of `sources` (the URLs the user gave) masked wherever it appears, as written or
    JSON-escaped (FFmpeg's own messages quote parts of a URL)."""
    for source in sources:
        shown = redact_url(source)
        for form in (source, json.dumps(source)[1:-1]):
            text = text.replace(form, shown)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)
    for source in sources:
        for secret in secrets_of(source):
            for form in {secret, json.dumps(secret)[1:-1]}:
                text = text.replace(form, MASK)
    return text
