"""The alert interval that live scoring and `tpwng serve` share."""

from __future__ import annotations

import numpy as np

from tpwng.scoring.alerts import AlertTracker

CLASSES = ["normal", "fighting", "robbery"]


def _snip(i: int, score: float) -> dict:
    return {"event": "snippet", "snippet": i, "time_s": i * 0.5, "score": score,
            "class": "robbery", "class_probability": 0.7, "wall_time": f"t{i}"}


def test_an_alert_opens_at_the_threshold_and_ends_below_it():
    scores = [0.1, 0.5, 0.9, 0.2]
    probs = [np.array([0.8, 0.1, 0.1]), np.array([0.2, 0.7, 0.1]), np.array([0.2, 0.1, 0.7]),
             np.array([0.9, 0.05, 0.05])]
    t = AlertTracker(0.5, {"source": "cam1"}, ("class",))
    got = [t.check(_snip(i, s), scores[: i + 1], probs[: i + 1], CLASSES)
           for i, s in enumerate(scores)]
    assert got[0] is None and got[2] is None
    assert list(got[1]) == ["source", "event", "snippet", "time_s", "score", "threshold",
                            "class", "wall_time"]
    assert got[1] == {"source": "cam1", "event": "alert_start", "snippet": 1,
                      "time_s": 0.5, "score": 0.5, "threshold": 0.5,
                      "class": "robbery", "wall_time": "t1"}
    end = got[3]
    assert end["source"] == "cam1" and end["event"] == "alert_end"
    assert (end["start_snippet"], end["snippet"], end["duration_s"]) == (1, 3, 1.0)
    assert end["max_score"] == 0.9 and end["ended_by"] == "score"
    # the mean of snippets 1 and 2 over the anomaly classes: fighting 0.4, robbery 0.4 -> the
    # first of equals
    assert end["class"] == "fighting" and np.isclose(end["class_probability"], 0.4)
    assert t.open is None


def test_an_open_alert_is_closed_when_the_stream_ends_and_none_without_threshold():
    t = AlertTracker(0.5)
    start = t.check(_snip(0, 0.8), [0.8], [], CLASSES)
    assert "class" not in start and "source" not in start
    end = t.close(1, 0.5, [0.8], [], CLASSES, "eof")
    assert end["ended_by"] == "eof" and "class" not in end and t.open is None
    assert t.close(1, 0.5, [0.8], [], CLASSES) is None
    off = AlertTracker(None)
    assert off.check(_snip(0, 1.0), [1.0], [], CLASSES) is None and off.open is None
