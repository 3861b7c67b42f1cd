"""Metrics and logging: every Prometheus object lives in ``metrics``."""
