"""TPWNG: Text Prompt with Normality Guidance for weakly supervised video anomaly detection."""

__version__ = "0.1.0"
