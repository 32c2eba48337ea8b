"""Every benchmark of collab pad against two baselines and its previous version; rewrites ``docs/benchmarks.md``.

    make bench                                   # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick --output /tmp/benchmarks.md   # a tiny smoke run
    .venv/bin/python bench/run.py --only capacity --previous HEAD~3     # one section, another previous version
    .venv/bin/python bench/report.py RESULTS.json                       # render a saved run again
    .venv/bin/python bench/run.py --only run_start --splice             # into the report, the rest kept
    .venv/bin/python bench/run.py --only cluster --splice               # likewise

Runs on loopback, one server at a time, each started fresh for each measurement
(``bench/servers.py``), with the same loads from ``bench/load.py``. The sections
(``bench/sections.py``), in order:

1. capacity: rooms of 5 at 5 edits/s and rooms of 50 at 2 edits/s, growing client counts, for
   ours, ours with ``FAST_PATH=false``, the previous version of ours (``bench/previous.py``), the
   bare ``websockets`` relay and the naive FastAPI design; a server's series stops after a load
   it failed twice (p99 over 100 ms, or a drop, or an undelivered edit);
2. the p99 target's load, ours, repeated;
3. the cost of durability: ours with ``STORE=memory`` at the first series' loads;
4. document size: the same load on documents of 1,000 and 100,000 characters, ours and naive;
5. slow consumer: one client per room stops reading; the others' p99, ours and naive;
6. idle memory per raw connection, every server;
7. browser pages (``bench/browser.py``): server memory per open room page, and edit latency
   measured in the pages, with 10 and 30 headless Chromium pages (ours only);
8. running code (``bench/run_start.py``, ``--only run_start``): the download to run Python and
   JavaScript in a page, as transferred and decoded, the start of a first (cold cache) and a warm
   Python run and of a JavaScript run, and Chromium's memory with Pyodide loaded and without;
   five fresh browsers (one with ``--quick``), medians;
9. abuse (``bench/abuse.py``): the server CPU of the costliest frame of each kind a client may
   send at the default limits, and ordinary rooms' p99 while one client floods the costliest push.
10. several processes (``bench/cluster.py``, ``--only cluster``): ours on one, two and three
    processes sharing rooms through PostgreSQL and Redis behind HAProxy, at growing loads in rooms
    of 5 and of 50 (latency, capacity, each process's CPU per edit, how the rooms were spread);
    one process with ``STORE=postgres`` against ``STORE=sqlite`` (commit and edit latency); and
    the time a room's clients take to recover when the process serving most of them is killed.
    Skipped, saying why, without PostgreSQL, Redis or HAProxy on this machine.

What is measured goes to a results file (JSON, saved after every section, ``--results``), and
the report is rendered from it (``bench/report.py``). The previous version is the git ref
``BENCH_BASELINE_REF`` (default ``7e9a834``), or ``--previous REF``; ``--previous ''`` leaves
it out. The whole run is bounded: every load stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import previous
import report
import results as results_file
import servers
from plan import QUICK, Plan
from results import Results
from sections import PREVIOUS, SECTIONS, Bench

from rooms.settings import Settings

RESULTS_DIR = Path(tempfile.gettempdir()) / "collab-pad-bench"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads of about a second: a smoke run")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--seconds", type=float, help="typing time of each capacity load")
    parser.add_argument(
        "--output",
        type=Path,
        default=report.DOC,
        help=f"report to write (default {report.DOC.relative_to(report.ROOT)})",
    )
    parser.add_argument(
        "--results", type=Path, help=f"results file to write (default {RESULTS_DIR}/results-<date>.json)"
    )
    parser.add_argument(
        "--splice",
        action="store_true",
        help="keep the other sections of --output, put in only this run's (run_start and cluster can be)",
    )
    parser.add_argument(
        "--previous",
        default=previous.default_ref(),
        metavar="REF",
        help=f"git ref of the previous version (default ${previous.ENV}, else {previous.DEFAULT_REF}; '' for none)",
    )
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    # Stopped from outside, still stop the servers and client processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan: Plan = QUICK if args.quick else Plan()
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    sections = [name for name in SECTIONS if args.only is None or name in args.only]
    if args.splice and (others := [name for name in sections if name not in report.SPLICEABLE]):
        sys.exit(f"--splice: {', '.join(others)} cannot be spliced into a report, only {', '.join(report.SPLICEABLE)}")
    results = Results(
        plan,
        datetime.datetime.now(datetime.UTC),
        command=f"`.venv/bin/python bench/run.py {' '.join(sys.argv[1:])}`"
        if sys.argv[1:]
        else "`make bench` (that is, `.venv/bin/python bench/run.py`)",
        machine=results_file.machine(),
        load_average=os.getloadavg(),
        ours_env=dict(servers.OURS_ENV),
        fast_path_setting="fast_path" in Settings.model_fields,
    )
    path = args.results or RESULTS_DIR / f"results-{results.started:%Y%m%d-%H%M%S}.json"
    contenders = {c.name: c for c in (servers.OURS, servers.FAST_PATH_OFF, servers.BARE, servers.NAIVE)}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        # Only the capacity series run the previous version: extracted for them alone.
        if args.previous and "capacity" in sections:
            results.previous = stack.enter_context(previous.extracted(args.previous))
            if results.previous.root is not None:
                contenders[PREVIOUS] = servers.Contender(PREVIOUS, servers.Kind.OURS, root=results.previous.root)
            else:
                print(f"previous version {args.previous}: {results.previous.error}", flush=True)
        bench = Bench(results, contenders, quick=args.quick)
        for name in sections:
            try:
                SECTIONS[name](bench)
            except Exception as error:  # a section that fails is reported; the others still run
                traceback.print_exc()
                results.failures.append(f"section {name}: {type(error).__name__}: {error}")
            results.sections.append(name)
            results.duration_s = time.monotonic() - started
            results.save(path)
    if args.splice:
        report.splice(results, args.output)
    else:
        report.write(results, args.output)
    print(f"\nwrote {path} and {args.output} in {results.duration_s / 60:.1f} minutes")


if __name__ == "__main__":
    main()
