"""Our server's store statistics, read from its ``/metrics`` after a load.

The histograms are read from Prometheus's text format and their quantiles interpolated inside
the bucket they fall in, as Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
from plan import SLOW_COMMIT_S


def histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """A histogram's cumulative buckets, sum and count from Prometheus text."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.rsplit(" ", 1)[1])
    return buckets, total, count


def count_up_to(buckets: list[tuple[float, float]], bound: float) -> float:
    """The count of observations up to ``bound``, which must be one of the bucket bounds."""
    return next((count for le, count in buckets if math.isclose(le, bound)), math.nan)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile``: linear interpolation inside the bucket it falls in."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (cumulative - lower_count) if cumulative > lower_count else 0.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def store_stats(port: int) -> dict[str, float]:
    """Commit latency and batch size from our server's /metrics, over everything it committed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    seconds, _, commits = histogram(text, "collab_store_commit_seconds")
    _, updates, _ = histogram(text, "collab_store_commit_updates")
    return {
        "commits": commits,
        "commit_p50_ms": quantile(0.5, seconds) * 1000,
        "commit_p99_ms": quantile(0.99, seconds) * 1000,
        # A few slow commits hold every room's updates meanwhile yet hardly move the p99 of
        # thousands of commits: counted apart, from the buckets.
        "slow_commits": commits - count_up_to(seconds, SLOW_COMMIT_S),
        "updates_per_commit": updates / commits if commits else math.nan,
    }
