"""Tests: many cameras (tpwng/serve)."""
