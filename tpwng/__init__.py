"""TPWNG: Text Prompt with Normality Guidance for weakly supervised video anomaly detection."""

__version__ = "0.1.0"

from pathlib import Path

# package data: split and annotation files, feature lists, schema, model configs, tables
RESOURCES = Path(__file__).resolve().parent / "resources"
