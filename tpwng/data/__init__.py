"""Datasets: split and annotation files, manifests, the synthetic set, training sequences.
"""
