"""Instructions a push costs the sans-I/O room, this code against a previous version, counted by
valgrind's callgrind: repeatable to a fraction of a percent on a busy machine, where timings are
not.

    .venv/bin/python bench/push_instructions.py            # against BENCH_BASELINE_REF
    .venv/bin/python bench/push_instructions.py 7e9a834    # against another ref

One `Room` in a room of 5 (an open room, as every benchmark load uses): each member in turn
pushes one character against the latest version, and every change is committed at once. The
same script runs twice in each tree, with 200 and with 1,200 pushes; the difference over 1,000
pushes leaves out start-up and joining. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from previous import ROOT, default_ref, extracted

FEW, MANY = 200, 1_200
DRIVE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from rooms.lifecycle import new_room
from rooms.protocol import Hello
from rooms.settings import Settings

room = new_room("r", Settings(), time.monotonic)
room.mark_changed()

def commit():
    write, count = room.take_write()
    room.committed(count)
    room.take_actions()

commit()
members = [room.join_versioned(Hello(type="hello", client_id=f"c{i}", username=f"u{i}")) for i in range(5)]
commit()
seqs = [0] * 5
for n in range(int(sys.argv[2])):
    i = n % 5
    seqs[i] += 1
    v = room.document.version
    changes = [v, [0, "x"]] if v else [[0, "x"]]
    room.receive(members[i], json.dumps({"type": "push", "version": v, "seq": seqs[i], "changes": changes}))
    commit()
"""


def instructions(tree: Path, pushes: int, script: Path) -> int:
    with tempfile.TemporaryDirectory() as out:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out"]
        done = subprocess.run(
            [*command, sys.executable, str(script), str(tree), str(pushes)],
            capture_output=True,
            text=True,
            check=True,
            # String hashes decide dict and set layouts, hence instruction counts: fixed, so that
            # two runs (and two trees) count the same work alike.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_push(tree: Path, script: Path) -> float:
    return (instructions(tree, MANY, script) - instructions(tree, FEW, script)) / (MANY - FEW)


def main() -> None:
    ref = sys.argv[1] if len(sys.argv) > 1 else default_ref()
    with tempfile.TemporaryDirectory() as tmp, extracted(ref) as previous:
        if previous.error or previous.root is None:
            raise SystemExit(f"{ref}: {previous.error}")
        script = Path(tmp) / "drive.py"
        script.write_text(DRIVE)
        ours, theirs = per_push(ROOT, script), per_push(previous.root, script)
    print(f"this code: {ours / 1000:.1f}k instructions a push")
    print(f"{ref} ({previous.commit[:12]}): {theirs / 1000:.1f}k instructions a push")
    print(f"ratio: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
