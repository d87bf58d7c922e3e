"""Tests: training (tpwng/train)."""
