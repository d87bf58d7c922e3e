"""What live scoring and `tpwng serve` share per scored snippet: its class fields, and the
alert interval over a stream's scores (open while they stay at or above a threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from tpwng.scoring.inference import snippet_class_probs
from tpwng.scoring.scorer import Scorer


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def snippet_class(scorer: Scorer, feats: np.ndarray, score: float
                  ) -> tuple[dict, np.ndarray | None]:
    """The most likely anomaly class of one scored snippet (its features ``[1, D]``) as a
    line's fields, and its class probabilities; none without class text embeddings."""
    if scorer.text is None:
        return {}, None
    probs = snippet_class_probs(feats, np.array([score]), scorer.text, scorer.logit_scale)[0]
    best = 1 + int(np.argmax(probs[1:]))
    return {"class": scorer.classes[best], "class_probability": float(probs[best])}, probs


def alert_start(snip: dict, threshold: float) -> dict:
    """The record that opens an alert at a scored snippet's line ``snip``."""
    return {"event": "alert_start", "snippet": snip["snippet"], "time_s": snip["time_s"],
            "score": snip["score"], "threshold": threshold}


def alert_end(start: dict, end_snippet: int, end_s: float, scores: Sequence[float],
              probs: Sequence[np.ndarray], classes: Sequence[str], ended_by: str) -> dict:
    """The record that closes the alert ``start`` (``end_snippet``: the first snippet after
    it): its duration, highest score and, with class probabilities, the most likely anomaly
    class over its snippets. Unscored (NaN) snippets are passed over."""
    run = slice(start["snippet"], end_snippet)
    record = {"event": "alert_end", "snippet": end_snippet, "time_s": end_s,
              "start_snippet": start["snippet"], "start_time_s": start["time_s"],
              "duration_s": end_s - start["time_s"],
              "max_score": float(np.nanmax(scores[run])), "threshold": start["threshold"],
              "ended_by": ended_by}
    if probs:
        within = np.nanmean(np.stack(probs[run]), axis=0)[1:]
        best = int(np.argmax(within))
        record |= {"class": classes[best + 1], "class_probability": float(within[best])}
    return record


class AlertTracker:
    """The open alert of one stream: it opens at a snippet scored at or above ``threshold``
    and ends at the first one below it (or when the stream ends). Its records start with
    ``prefix``; an opening record also carries the snippet's fields ``start_fields``."""

    def __init__(self, threshold: float | None, prefix: dict | None = None,
                 start_fields: tuple[str, ...] = ()) -> None:
        self.threshold = threshold
        self.prefix = prefix or {}
        self.start_fields = start_fields
        self.open: dict | None = None

    def check(self, snip: dict, scores: Sequence[float], probs: Sequence[np.ndarray],
              classes: Sequence[str]) -> dict | None:
        """The alert record that the scored snippet's line ``snip`` starts or ends, if any."""
        x = self.threshold
        if x is None:
            return None
        if self.open is None and snip["score"] >= x:
            self.open = self.prefix | alert_start(snip, x)
            self.open |= {k: snip[k] for k in self.start_fields if k in snip}
            self.open["wall_time"] = snip["wall_time"]
            return self.open
        if self.open is not None and snip["score"] < x:
            return self.close(snip["snippet"], snip["time_s"], scores, probs, classes)
        return None

    def close(self, end_snippet: int, end_s: float, scores: Sequence[float],
              probs: Sequence[np.ndarray], classes: Sequence[str],
              ended_by: str = "score") -> dict | None:
        """The open alert's end record (``end_snippet``: the first snippet after it); None
        when no alert is open."""
        if self.open is None:
            return None
        record = self.prefix | alert_end(self.open, end_snippet, end_s, scores, probs, classes,
                                         ended_by)
        record["wall_time"] = utc_now()
        self.open = None
        return record
