"""Tests: benchmarks (tpwng/bench)."""
