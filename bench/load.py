"""Load generator: R rooms x U clients typing into one server, edit-to-peer latency measured.

    .venv/bin/python bench/load.py --kind ours --rooms 100 --clients 5 --rate 5 --seconds 10
    .venv/bin/python bench/load.py --kind naive --rooms 20 --clients 5 --doc-chars 100000
    .venv/bin/python bench/load.py --kind ours --idle 1000

Without ``--port`` the server of that kind is started on a free loopback port and stopped at
the end (``bench/servers.py``). Every other member's receipt of an edit gives one latency
sample: from the moment the author typed it to the moment the peer read it, in one process and
on one clock. Prints a table and one JSON line. All traffic stays on 127.0.0.1; every run ends
by itself.

This file is the command line; the rest of the generator is in three modules:

* ``load_client.py``: the clients, one WebSocket connection each, and what they type;
* ``load_driver.py``: the client processes of one load, and the server's CPU and memory;
* ``load_result.py``: what a load measured, its percentiles, and how it is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from load_client import Load
from load_driver import idle_memory, run_load
from load_result import Result, format_result, percentile
from servers import Kind

__all__ = ["Load", "Result", "format_result", "idle_memory", "main", "percentile", "run_load"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", type=Kind, choices=list(Kind), default=Kind.OURS)
    parser.add_argument("--port", type=int, default=0, help="an already running server (default: start one)")
    parser.add_argument("--pid", type=int, default=0, help="its pid, for CPU and memory")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--clients", type=int, default=5, help="clients per room")
    parser.add_argument("--rate", type=float, default=5.0, help="edits a second per typing client")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--doc-chars", type=int, default=0)
    parser.add_argument("--stalled", type=int, default=0, help="clients per room that stop reading")
    parser.add_argument("--silent", type=int, default=0, help="clients per room that read but never type")
    parser.add_argument("--no-batch", action="store_true", help="ours: do not ask for coalesced frames")
    parser.add_argument(
        "--push-every-edit",
        action="store_true",
        help="ours: a push per edit, not one in flight at a time (harder than any real client)",
    )
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--idle", type=int, default=0, help="measure memory of N idle connections instead")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        port, pid = args.port, args.pid
        if not port:
            server = stack.enter_context(servers.running(args.kind))
            port, pid = server.port, server.pid
        if args.idle:
            print(json.dumps(idle_memory(args.kind, port, pid, args.idle)))
            return
        load = Load(
            kind=args.kind,
            port=port,
            rooms=args.rooms,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            doc_chars=args.doc_chars,
            stalled=args.stalled,
            silent=args.silent,
            batch=not args.no_batch,
            push_every_edit=args.push_every_edit,
            procs=args.procs,
        )
        result = run_load(load, pid or None)
    print(format_result(result))
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
