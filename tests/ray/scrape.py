"""Scrape the node endpoint the way Prometheus would, over HTTP."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path


def parse_samples(text: str) -> dict[str, float]:
    """Sum of every sample per metric name (labels dropped)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def scrape(metrics_dir: Path) -> dict[str, float]:
    """Serve ``metrics_dir`` (the actors' multiprocess directory) on a free port and GET it."""
    from services.observability import metrics

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        server = metrics.serve_metrics(0)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return parse_samples(response.read().decode())
        finally:
            server.close()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
