"""Tests: the Snakemake DAG end to end: rules, SLURM, bad input, interruptions, security cases."""
