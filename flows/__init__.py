"""Prefect flows: they orchestrate component calls and hold no ML or I/O logic."""
