"""Shared test helpers: running the DAG, fault injection, a one-node SLURM cluster."""
