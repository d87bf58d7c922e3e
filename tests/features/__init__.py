"""Tests: decoding, CLIP extraction, feature stores (tpwng/features)."""
