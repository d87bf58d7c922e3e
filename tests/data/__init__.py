"""Tests: datasets, manifests, synthetic data (tpwng/data)."""
