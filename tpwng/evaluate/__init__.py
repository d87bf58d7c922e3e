"""Scoring, metrics, baselines, plots, diagnostics, ablation tables, and scoring one's own videos.
"""


class ResultsError(ValueError):
    """Result files (metrics, scores) that are read together do not fit together."""
