"""Differential test: rooms.changes.ChangeSet against the real @codemirror/state under node.

Thousands of seeded random cases go to ``tests/node/oracle.mjs`` in one batch (one node process);
every result CodeMirror computes (apply, toJSON, map both ways, compose, mapPos, ChangeSet.of) must
equal ours exactly. Documents mix ASCII, newlines, CJK, emoji (astral, so two UTF-16 units) and
combining marks. Some changes sit at arbitrary UTF-16 offsets, splitting surrogate pairs, because
map and compose are defined on unit offsets alone; and some JSON is deliberately unnormalised
(adjacent keeps, ``[0]``, a replacement as a deletion plus insertions) because ``fromJSON`` keeps
such sections as they are.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rooms.changes import ChangeSet, JsonPart, index_to_utf16, utf16_len

NODE_DIR = Path(__file__).parent / "node"
ORACLE = NODE_DIR / "oracle.mjs"
STATE_PACKAGE = NODE_DIR / "node_modules" / "@codemirror" / "state" / "package.json"
CASES = 2500
SEED = 20240605

PIECES = ["a", "b", "x", "yz", " ", "\t", "\n", "\n", "\r", "漢", "字", "😀", "👍🏽", "e\u0301", "𝒳"]
EMPTY_CHANGES: list[JsonPart] = [[0], [0, ""]]
INSERT_PIECES = ["q", "Q", " ", "\n", "漢", "😀", "🏽", "e\u0301"]


LOCKFILE = NODE_DIR / "package-lock.json"


def _pinned_version() -> str:
    if LOCKFILE.exists():
        version: str = json.loads(LOCKFILE.read_text())["packages"]["node_modules/@codemirror/state"]["version"]
    else:
        version = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["@codemirror/state"]
    return version


def _installed_version() -> str | None:
    if not STATE_PACKAGE.exists():
        return None
    version: str = json.loads(STATE_PACKAGE.read_text())["version"]
    return version


@pytest.fixture(scope="module")
def node() -> str:
    """Path of node, with the pinned @codemirror/state installed into tests/node/node_modules."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the differential test against @codemirror/state needs node")
    if _installed_version() != _pinned_version():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: cannot install @codemirror/state into tests/node")
        command = [npm, "ci" if LOCKFILE.exists() else "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"]
        completed = subprocess.run(
            command, capture_output=True, encoding="utf-8", errors="replace", timeout=600, check=False
        )
        if completed.returncode != 0 or _installed_version() != _pinned_version():
            pytest.fail(
                f"`{' '.join(command)}` failed (exit {completed.returncode}), so @codemirror/state "
                f"{_pinned_version()} is not available for the differential test:\n"
                f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
            )
    return node


def _random_text(rng: random.Random, pieces: list[str], max_pieces: int) -> str:
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, max_pieces)))


def _random_changes(rng: random.Random, doc: str, *, unit_offsets: bool) -> list[JsonPart]:
    """Random CodeMirror JSON over ``doc``: sorted, non-overlapping ranges plus inserted text.

    With ``unit_offsets`` the range ends are any UTF-16 offsets (possibly inside a surrogate
    pair); otherwise they fall on code point boundaries, so that the changes can be applied.
    """
    units = utf16_len(doc)
    count = rng.randint(0, 4)
    if unit_offsets:
        ends = sorted(rng.randint(0, units) for _ in range(2 * count))
    else:
        ends = sorted(index_to_utf16(doc, rng.randint(0, len(doc))) for _ in range(2 * count))
    parts: list[JsonPart] = []
    pos = 0
    for start, end in zip(ends[::2], ends[1::2], strict=True):
        insert = _random_text(rng, INSERT_PIECES, 3)
        if start == end and not insert:
            continue
        if start > pos:
            parts.append(start - pos)
        parts.append([end - start, *insert.split("\n")] if insert else [end - start])
        pos = end
    if units > pos:
        parts.append(units - pos)
    return parts


def _unnormalise(rng: random.Random, parts: list[JsonPart]) -> list[JsonPart]:
    """The same changes written the ways CodeMirror's fromJSON accepts but never produces."""
    out: list[JsonPart] = []
    for part in parts:
        if rng.random() < 0.15:
            out.append(rng.choice(EMPTY_CHANGES))
        if isinstance(part, int):
            cut = rng.randint(1, part)
            # Zero-length keeps are the one form from_json refuses (CodeMirror never emits them).
            out.extend([cut, part - cut] if cut < part and rng.random() < 0.4 else [part])
        elif len(part) == 1 and rng.random() < 0.4:
            removed = part[0]
            assert isinstance(removed, int)
            cut = rng.randint(0, removed)
            out.extend([[cut], [removed - cut]])
        elif len(part) > 1 and rng.random() < 0.4:
            removed = part[0]
            assert isinstance(removed, int)
            text = "\n".join(str(line) for line in part[1:])
            cut = rng.randint(0, len(text))
            # A replacement written as a deletion followed by insertions of the two halves.
            out.append([removed])
            for half in (text[:cut], text[cut:]):
                if half:
                    out.append([0, *half.split("\n")])
        else:
            out.append(part)
    return out


def _make_case(rng: random.Random) -> dict[str, Any]:
    doc = _random_text(rng, PIECES, rng.choice([0, 3, 12, 12, 30, 30]))
    a = _random_changes(rng, doc, unit_offsets=False)
    b = _random_changes(rng, doc, unit_offsets=rng.random() < 0.25)
    after_a = ChangeSet.from_json(a).apply(doc)
    c = _random_changes(rng, after_a, unit_offsets=rng.random() < 0.25)
    if rng.random() < 0.3:
        a = _unnormalise(rng, a)
    if rng.random() < 0.3:
        b = _unnormalise(rng, b)
    if rng.random() < 0.3:
        c = _unnormalise(rng, c)
    units = utf16_len(doc)
    positions = sorted({0, units, *(rng.randint(0, units) for _ in range(3))})
    start = rng.randint(0, units)
    end = rng.randint(start, units)
    # No "\r": CodeMirror's ChangeSet.of turns it into a line break, of_replace keeps it on purpose.
    insert = _random_text(rng, [p for p in INSERT_PIECES if p != "\r"], 2)
    replace = [units, start, end, insert]
    return {"doc": doc, "a": a, "b": b, "c": c, "positions": positions, "replace": replace}


def _python_results(case: dict[str, Any]) -> dict[str, Any]:
    a = ChangeSet.from_json(case["a"])
    b = ChangeSet.from_json(case["b"])
    c = ChangeSet.from_json(case["c"])
    length, start, end, insert = case["replace"]
    return {
        "apply": a.apply(case["doc"]),
        "a": a.to_json(),
        "map": a.map(b).to_json(),
        "mapBefore": a.map(b, True).to_json(),
        "bMapA": b.map(a).to_json(),
        "compose": a.compose(c).to_json(),
        "mapPos": [[a.map_pos(pos, -1), a.map_pos(pos, 1)] for pos in case["positions"]],
        "ofReplace": ChangeSet.of_replace(length, start, end, insert).to_json(),
    }


def run_node(node: str, script: Path, cases: list[Any], what: str) -> list[dict[str, Any]]:
    """Each case as one JSON line to ``script`` under node; its answer to each, one line each.

    ASCII only on the way in (``ensure_ascii``): an astral character goes as its two UTF-16
    escapes, so node reads the very code units Python counted."""
    stdin = "".join(json.dumps(case) + "\n" for case in cases)
    completed = subprocess.run(
        [node, str(script)], input=stdin.encode("ascii"), capture_output=True, timeout=300, check=False
    )
    assert completed.returncode == 0, f"{what} failed: {completed.stderr.decode(errors='replace')}"
    results = [json.loads(line) for line in completed.stdout.decode("utf-8").splitlines() if line]
    assert len(cases) == len(results), f"the {what} answered a different number of cases"
    return results


def _run_oracle(node: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return run_node(node, ORACLE, cases, "oracle")


def test_changeset_matches_codemirror_on_random_cases(node: str) -> None:
    rng = random.Random(SEED)
    cases = [_make_case(rng) for _ in range(CASES)]

    expected = _run_oracle(node, cases)

    mismatches: list[str] = []
    for index, (case, codemirror) in enumerate(zip(cases, expected, strict=True)):
        assert "error" not in codemirror, f"case {index}: codemirror threw on {case!r}: {codemirror['error']}"
        ours = _python_results(case)
        for key, value in codemirror.items():
            if ours[key] != value:
                mismatches.append(
                    f"case {index}, {key}: codemirror gave {value!r}, we gave {ours[key]!r}\n"
                    f"  input: {json.dumps(case, ensure_ascii=False)}"
                )
    if mismatches:
        pytest.fail(f"{len(mismatches)} mismatches with codemirror in {CASES} cases, first:\n{mismatches[0]}")


def test_oracle_receives_astral_characters_as_surrogate_pairs(node: str) -> None:
    case = {
        "doc": "😀a",
        "a": [2, [1, "b"]],
        "b": [3],
        "c": [3],
        "positions": [0, 1, 2, 3],
        "replace": [3, 0, 2, ""],
    }

    (codemirror,) = _run_oracle(node, [case])

    expected = {"apply": "😀b", "mapPos": [[0, 0], [1, 1], [2, 2], [3, 3]]}
    assert expected == {
        "apply": codemirror["apply"],
        "mapPos": codemirror["mapPos"],
    }
