"""Tests: scoring new inputs: score, live, viewer (tpwng/scoring)."""
