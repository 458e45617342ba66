"""Prefect-facing helpers: run records and lineage, task runners, reading flow runs and
starting deployments."""
