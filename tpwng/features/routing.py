"""Which decoder reads a video: decord where it returns the frames asked for, PyAV elsewhere.

decord seeks: to read frame i it jumps to the keyframe before i and decodes forward. Two kinds
of stream defeat that without an error, so decord returns other frames than the ones named
(measured with frame numbers drawn into the pixels, docs/decisions.md):

- MPEG-4 Part 2 (``mpeg4``: DivX, Xvid) with B-frames, whatever the container: 17 of 19 sampled
  frames wrong in AVI, up to 46 frames away; single reads wrong in MP4 too.
- Open GOPs: pictures that follow a keyframe in decoding order but precede it in display order
  reference the previous GOP (x264 ``open-gop``); 8 of 25 sampled frames of an MKV came from
  the GOP before.

PyAV decoding every frame in order returns the exact frames in all of these. The facts come
from the stream's header and its first packets (no decoding), so routing costs a few
milliseconds per video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DECODERS = ("decord", "pyav")
DECODER_SETTINGS = (*DECODERS, "auto")
SCAN_PACKETS = 600  # packets read from the start of a stream to find B-frames and open GOPs
SCAN_KEYFRAMES = 4  # ... or this many keyframes, whichever comes first
PART2_CODECS = ("mpeg4",)  # FFmpeg's name for MPEG-4 Part 2


@dataclass(frozen=True)
class StreamFacts:
    """What routing needs to know of a video stream."""

    container: str
    codec: str
    b_frames: bool  # pictures reordered between decoding and display
    open_gop: bool  # a picture after a keyframe (decoding order) shown before it


def inspect_stream(path: str | Path) -> StreamFacts:
    """Container, codec, B-frames and open GOPs of the first video stream of `path`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        b_frames = bool(stream.codec_context.has_b_frames)
        open_gop = False
        key_pts: int | None = None
        last_pts: int | None = None
        keyframes = 0
        for n, packet in enumerate(container.demux(stream)):
            if n >= SCAN_PACKETS:
                break
            if packet.pts is None or packet.size == 0:
                continue
            if packet.is_keyframe:
                keyframes += 1
                if keyframes > SCAN_KEYFRAMES:
                    break
                key_pts = packet.pts
            elif key_pts is not None and packet.pts < key_pts:
                open_gop = True
            if last_pts is not None and packet.pts < last_pts:
                b_frames = True
            last_pts = packet.pts
            if open_gop:
                break
        return StreamFacts(container.format.name, stream.codec_context.name, b_frames, open_gop)


def misread_by_decord(facts: StreamFacts) -> str | None:
    """Why decord would return wrong frames of such a stream, or None where it reads it exactly."""
    if facts.codec in PART2_CODECS and facts.b_frames:
        return "MPEG-4 Part 2 with B-frames"
    if facts.open_gop:
        return "open GOPs (pictures after a keyframe reference the GOP before it)"
    return None


def choose_decoder(facts: StreamFacts | None, setting: str = "auto") -> tuple[str, str]:
    """(decoder, why) for a stream under ``extraction.decoder`` = `setting`.

    ``auto``: decord unless it misreads the stream, then PyAV. ``pyav``: PyAV for every video.
    ``decord``: decord, and a stream it misreads is refused (a ValueError saying why), never
    read wrongly.
    """
    if setting not in DECODER_SETTINGS:
        raise ValueError(f"extraction.decoder must be one of {DECODER_SETTINGS}, got {setting!r}")
    if setting == "pyav":
        return "pyav", "extraction.decoder: pyav"
    if facts is None:
        raise ValueError(f"extraction.decoder: {setting} needs the stream's facts")
    reason = misread_by_decord(facts)
    if reason is None:
        return "decord", f"{facts.codec} in {facts.container.split(',')[0]}: read exactly"
    if setting == "decord":
        raise ValueError(f"decord returns wrong frames of this video ({reason}, "
                         f"{facts.codec} in {facts.container.split(',')[0]}); set "
                         "extraction.decoder: auto (or pyav) to decode it in order with PyAV")
    return "pyav", reason
