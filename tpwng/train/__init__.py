"""Training on a feature store, and checkpoints.
"""
