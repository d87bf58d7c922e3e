"""Tests: metrics, tables, reproduction (tpwng/evaluate)."""
