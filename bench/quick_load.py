"""A quick load check of collab pad on loopback: edit-to-peer latency, server CPU and memory.

    .venv/bin/python bench/quick_load.py --rooms 100 --clients 5 --rate 5 --seconds 10
    .venv/bin/python bench/quick_load.py --idle 1000

The same as ``bench/load.py --kind ours`` (which see for every option): starts ``python app.py``
on a free loopback port, runs one bounded load, prints a table and one JSON line, stops.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import load

if __name__ == "__main__":
    load.main(["--kind", "ours", *sys.argv[1:]])
