"""Runnable bertbeam pipelines: ``python -m pipelines.embed …`` / ``python -m pipelines.label …``."""
