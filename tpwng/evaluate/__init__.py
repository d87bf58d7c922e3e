"""Scoring, metrics, baselines, plots, diagnostics, ablation tables, and scoring one's own videos.
"""
