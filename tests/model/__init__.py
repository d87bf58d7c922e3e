"""Tests: TPWNG itself (tpwng/model)."""
