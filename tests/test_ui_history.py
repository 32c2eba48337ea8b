"""The history view: `Playback` over both stores, and the dialog with NiceGUI's simulated `user`.

Versions are written into a room by a raw client of the registry (pushes, as any client sends
them), so what the view shows is checked against what the store holds. Runs are written into
the store directly (`RunRecord`), as the room commits them once they end.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import get_args

import pytest
from nicegui import ui
from nicegui.testing import User

from rooms.changes import ChangeSet
from rooms.protocol import Hello, Push
from rooms.registry import RoomRegistry
from rooms.room_messages import RESTORE_CLIENT
from rooms.run_protocol import RunStatus
from rooms.session import Session
from rooms.store import HistoryUnavailable, Record, RoomWrite, RunRecord, Store
from rooms.store.memory import MemoryStore
from rooms.store.sqlite import SqliteStore
from tests.ui_simulation import Recorder
from ui import history_runs
from ui.editor import CollabEditor
from ui.history import Playback, codemirror_language, inserted_ranges
from ui.history_runs import (
    MARK,
    NO_COLOR,
    STATUS_TEXT,
    RunSummary,
    run_output,
    run_tests,
    safe_color,
    slider_markers,
    summarize,
)

TEXTS = [
    "def add(a, b):\n",
    "def add(a, b):\n    return a + b\n",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "def add(a, b):\n    # sum\n    return a + b\n\nprint(add(1, 2))\n",
]


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout} s")
        await asyncio.sleep(0.02)


async def wait_for_notice(user: User, text: str, timeout: float = 5.0) -> None:
    await until(lambda: user.notify.contains(text), f"notified {text!r}: {user.notify.messages}", timeout)


async def writer(registry: RoomRegistry, room_id: str, name: str, color: str) -> Session:
    hello = Hello(type="hello", client_id=f"raw-{name}", username=name, color=color, version=None)
    return await registry.join_versioned(room_id, Recorder(), hello)


async def write(registry: RoomRegistry, session: Session, texts: Sequence[str]) -> None:
    """Each text as one push that turns the room's text into it; back once all are stored."""
    for text in texts:
        document = session.room.document
        seq = (document.last_seq(session.client_id) or 0) + 1
        changes = ChangeSet.diff(document.text, text).to_json()
        registry.handle(session, Push(type="push", version=document.version, seq=seq, changes=changes))
    assert await registry.wait_committed(5)


async def enter(user: User, room_id: str, name: str) -> None:
    await user.open(f"/room/{room_id}")
    await user.should_see("Your name in rooms")
    user.find(marker="name").type(name)
    user.find(marker="save-name").click()
    await user.should_see(kind=CollabEditor)


def connect_page(user: User, client_id: str) -> CollabEditor:
    """Say hello as the editor's browser half does, so that the page has a live session."""
    hello = {"type": "hello", "client_id": client_id, "version": None, "resume_token": "t" * 16, "batch": True}
    user.find(CollabEditor).trigger("frame", {"gen": 1, "data": json.dumps(hello)})
    return user.find(CollabEditor).elements.pop()


def the(user: User, marker: str) -> ui.element:
    return user.find(marker=marker).elements.pop()


def slider(user: User) -> ui.slider:
    element = the(user, "history-slider")
    assert isinstance(element, ui.slider)
    return element


def code(user: User) -> ui.codemirror:
    element = the(user, "history-code")
    assert isinstance(element, ui.codemirror)
    return element


def label(user: User, marker: str) -> str:
    element = the(user, marker)
    assert isinstance(element, ui.label)
    return element.text


# Playback, on both stores


def timeline(count: int, seed: int = 7) -> list[str]:
    """Texts of a history with insertions and deletions anywhere, some of astral characters."""
    rng = random.Random(seed)
    texts, text = [], ""
    for _ in range(count):
        position = rng.randint(0, len(text))
        if text and rng.random() < 0.3:
            text = text[:position] + text[position + rng.randint(1, 4) :]
        else:
            text = text[:position] + rng.choice(["ab", "😀", "中文\n", "x", "\n    "]) + text[position:]
        texts.append(text)
    return texts


async def store_history(store: Store, texts: Sequence[str], *, snapshot_every: int = 0, room_id: str = "r") -> None:
    """Commit ``texts`` as versions 1..n, by two authors in turn, with snapshots as asked."""
    previous = ""
    batch: list[Record] = []
    for version, text in enumerate(texts, 1):
        author, color = ("Ann", "#e11d48") if version % 2 else ("Bob", "#2563eb")
        changes = json.dumps(ChangeSet.diff(previous, text).to_json(), ensure_ascii=False)
        batch.append(Record(version, f"c-{author}", version, changes, "", author, color, 1_700_000_000.0 + version))
        previous = text
        at_snapshot = bool(snapshot_every) and version % snapshot_every == 0
        if at_snapshot or version == len(texts):
            snapshot = text if at_snapshot else None
            await store.commit([RoomWrite(room_id, "epoch", "python", batch, snapshot, version)])
            batch = []


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "rooms.sqlite3")
    await made.open()
    yield made
    await made.close()


async def test_every_version_reads_as_the_store_gives_it_in_any_order_with_few_texts_kept(store: Store) -> None:
    texts = timeline(240)
    await store_history(store, texts, snapshot_every=50)
    playback = Playback(store, "r", checkpoint_every=10, max_checkpoints=4)
    assert 240 == (await playback.refresh() or pytest.fail("no room")).version
    order = [*range(241), *range(240, -1, -1), *random.Random(3).sample(range(241), 241)]
    for version in order:
        frame = await playback.frame(version)
        assert (texts[version - 1] if version else "") == frame.text, version
        assert len(playback.checkpoints) <= 4
    frame = await playback.frame(7)
    assert frame.record is not None and 7 == frame.record.version and "Ann" == frame.record.author


async def test_each_step_knows_what_its_update_inserted(store: Store) -> None:
    texts = ["😀 a", "😀 中文 a", "😀 中文 a\nb", "😀 a\nb"]
    await store_history(store, texts)
    playback = Playback(store, "r")
    await playback.refresh()
    frame = await playback.frame(2)
    assert [(2, 5)] == list(frame.changed) and "中文 " == frame.text[2:5]
    third = await playback.frame(3)
    assert [(6, 8)] == list(third.changed) and "\nb" == third.text[6:8]
    assert () == (await playback.frame(4)).changed  # a deletion only
    assert None is (await playback.frame(0)).record


async def test_a_shortened_history_starts_at_its_oldest_kept_version() -> None:
    store = MemoryStore(keep_versions=20)
    texts = timeline(60)
    await store_history(store, texts, snapshot_every=10)
    playback = Playback(store, "r", checkpoint_every=8)
    info = await playback.refresh()
    assert info is not None and 0 < info.oldest < 60
    oldest = await playback.frame(info.oldest)
    assert texts[info.oldest - 1] == oldest.text and oldest.record is None
    assert texts[info.oldest] == (await playback.frame(info.oldest + 1)).text
    with pytest.raises(HistoryUnavailable):
        await playback.frame(info.oldest - 1)


async def test_authors_are_counted_once_and_then_only_for_new_versions(store: Store) -> None:
    texts = timeline(9)
    await store_history(store, texts[:7])
    playback = Playback(store, "r")
    await playback.refresh()
    assert await playback.count_authors()
    assert {("Ann", "#e11d48"): 4, ("Bob", "#2563eb"): 3} == playback.authors
    assert not await playback.count_authors()
    bad_color = Record(8, "c", 8, json.dumps([len(texts[6]), [0, "!"]]), "", "Cy", "bad")
    await store.commit([RoomWrite("r", "epoch", "python", [bad_color], None, 8)])
    await playback.refresh()
    assert await playback.count_authors()
    assert 1 == playback.authors[("Cy", NO_COLOR)]


def test_colours_and_languages_for_the_view() -> None:
    assert "#a1B2c3" == safe_color("#a1B2c3")
    assert NO_COLOR == safe_color("red; background-image: url(x)")
    assert "Python" == codemirror_language("python")
    assert "C++" == codemirror_language("cpp")
    assert "C#" == codemirror_language("csharp")
    assert None is codemirror_language("plaintext")
    assert None is codemirror_language("<script>")


def test_inserted_ranges_of_a_replacement_across_lines() -> None:
    changes = ChangeSet.from_json([2, [1, "X", "Y"], 3])
    text = changes.apply("ab-cde")
    assert "abX\nYcde" == text
    assert ((2, 5),) == inserted_ranges(changes, text)


# The dialog


async def test_a_room_without_history_says_so_until_its_first_version(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await enter(ann, "blank", "Ann")
    ann.find(marker="history").click()
    await ann.should_see("There is no history yet", retries=50)
    bob = await writer(registry, "blank", "Bob", "#2563eb")
    await write(registry, bob, TEXTS[:2])
    await ann.should_see("version 2 of 2", retries=50)
    assert TEXTS[1] == code(ann).value


async def test_the_slider_shows_each_versions_text_and_author(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await enter(ann, "slide", "Ann")
    bob = await writer(registry, "slide", "<b>Bob</b>", "#2563eb")
    cy = await writer(registry, "slide", "Cy", "#16a34a")
    await write(registry, bob, TEXTS[:2])
    await write(registry, cy, TEXTS[2:])
    ann.find(marker="history").click()
    await ann.should_see("version 4 of 4", retries=50)  # it opens at the text as it is now
    assert TEXTS[3] == code(ann).value
    assert "Python" == code(ann).props["language"]
    assert "Cy" == label(ann, "history-author")
    for version in (1, 3, 2):
        slider(ann).set_value(version)
        await until(lambda v=version: TEXTS[v - 1] == code(ann).value, f"showing version {version}")
        assert f"version {version} of 4" == label(ann, "history-version")
        assert ("<b>Bob</b>" if version < 3 else "Cy") == label(ann, "history-author")
        assert label(ann, "history-time").endswith("UTC")
    # What version 2 inserted is marked in its author's colour.
    assert [
        {
            "kind": "mark",
            "from": len(TEXTS[0]),
            "to": len(TEXTS[1]),
            "class": "collab-history-change",
            "attributes": {"style": "background-color: #2563eb40"},
        }
    ] == code(ann).decorations
    # The legend names every author, markup shown as text.
    await ann.should_see("<b>Bob</b>", marker="history-legend", retries=50)
    slider(ann).set_value(0)
    await until(lambda: "" == code(ann).value, "showing version 0")
    assert "· the empty start" == label(ann, "history-time")
    # Living on: the room's own editor is untouched.
    assert TEXTS[3] == registry.rooms["slide"].document.text


async def test_play_steps_forward_to_the_head_and_stops(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann = users()
    await enter(ann, "play", "Ann")
    bob = await writer(registry, "play", "Bob", "#2563eb")
    await write(registry, bob, TEXTS + [TEXTS[-1] + f"# {n}\n" for n in range(4)])
    ann.find(marker="history").click()
    await ann.should_see("version 8 of 8", retries=50)
    speed = the(ann, "history-speed")
    assert isinstance(speed, ui.select)
    speed.set_value(16)
    ann.find(marker="history-play").click()  # at the head, play starts over
    seen: set[int] = set()

    def at_head_and_paused() -> bool:
        seen.add(int(slider(ann).value or 0))
        return 8 == slider(ann).value and "play_arrow" == the(ann, "history-play").props["icon"]

    await until(at_head_and_paused, "played to the head")
    assert len(seen) >= 3 and min(seen) < 8
    assert TEXTS[-1] + "# 3\n" == code(ann).value
    # Pause holds the position.
    slider(ann).set_value(1)
    speed.set_value(1)
    ann.find(marker="history-play").click()
    assert "pause" == the(ann, "history-play").props["icon"]
    ann.find(marker="history-play").click()
    assert "play_arrow" == the(ann, "history-play").props["icon"]
    assert 1 == slider(ann).value


async def test_new_versions_extend_the_slider_and_never_move_it(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await enter(ann, "grow", "Ann")
    bob = await writer(registry, "grow", "Bob", "#2563eb")
    await write(registry, bob, TEXTS[:2])
    ann.find(marker="history").click()
    await ann.should_see("version 2 of 2", retries=50)
    slider(ann).set_value(1)
    await until(lambda: TEXTS[0] == code(ann).value, "showing version 1")
    await write(registry, bob, TEXTS[2:])
    await ann.should_see("version 1 of 4", retries=50)
    assert 4 == slider(ann).props["max"]
    assert 1 == slider(ann).value
    assert TEXTS[0] == code(ann).value


async def test_restore_adds_a_version_with_the_old_text_and_keeps_the_history(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await enter(ann, "restore", "Ann")
    editor = connect_page(ann, "ann-tab")
    bob = await writer(registry, "restore", "Bob", "#2563eb")
    await write(registry, bob, TEXTS)
    await until(lambda: editor.session is not None, "joined")
    before = await registry.store.history("restore", 0, 100)
    ann.find(marker="history").click()
    await ann.should_see("version 4 of 4", retries=50)
    slider(ann).set_value(2)
    await until(lambda: TEXTS[1] == code(ann).value, "showing version 2")
    ann.find(marker="history-restore").click()
    await ann.should_see("Restore version 2?")
    ann.find(marker="history-restore-confirm").click()
    await wait_for_notice(ann, "Restoring version 2 as version 5.")
    assert TEXTS[1] == registry.rooms["restore"].document.text
    assert await registry.wait_committed(5)
    after = await registry.store.history("restore", 0, 100)
    assert before == after[:4]
    assert 5 == after[-1].version and RESTORE_CLIENT == after[-1].client_id and "Ann" == after[-1].author
    assert TEXTS[1] == await registry.store.text_at("restore", 5)
    # The new version reaches the view like any other: the slider grows and stays where it was.
    await ann.should_see("version 2 of 5", retries=50)
    assert 2 == slider(ann).value
    # Restoring the text the room already has adds nothing.
    slider(ann).set_value(5)
    await until(lambda: "version 5 of 5" == label(ann, "history-version"), "showing version 5")
    assert "Ann (restored a version)" == label(ann, "history-author")
    ann.find(marker="history-restore").click()
    ann.find(marker="history-restore-confirm").click()
    await wait_for_notice(ann, "already is the text of version 5")
    assert 5 == registry.rooms["restore"].document.version


async def test_restore_without_a_connection_says_so(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann = users()
    await enter(ann, "offline", "Ann")  # the page never says hello: no live session
    bob = await writer(registry, "offline", "Bob", "#2563eb")
    await write(registry, bob, TEXTS[:2])
    ann.find(marker="history").click()
    await ann.should_see("version 2 of 2", retries=50)
    slider(ann).set_value(1)
    await until(lambda: TEXTS[0] == code(ann).value, "showing version 1")
    ann.find(marker="history-restore").click()
    ann.find(marker="history-restore-confirm").click()
    await wait_for_notice(ann, "Not connected")
    assert TEXTS[1] == registry.rooms["offline"].document.text
    assert 2 == registry.rooms["offline"].document.version


# Runs


def run_record(
    run_id: str,
    version: int,
    *,
    author: str = "Cy",
    color: str = "#16a34a",
    status: str = "ok",
    output: object = (),
    tests: object = None,
) -> RunRecord:
    return RunRecord(
        run_id,
        version,
        f"u-{author}",
        author,
        color,
        "python",
        "code" if tests is None else "tests",
        1_700_000_000.0 + version,
        120,
        status,
        False,
        json.dumps(list(output)),
        "" if tests is None else json.dumps(tests),
    )


TESTS = [
    {"name": "small", "passed": True, "error": None, "args": [[2, 7], 9], "expected": [0, 1], "actual": [0, 1]},
    {"name": "empty", "passed": False, "error": "IndexError: list index out of range", "args": [[], 1],
     "expected": None, "actual": None},
]  # fmt: skip


async def store_runs(registry: RoomRegistry, room_id: str, runs: Sequence[RunRecord]) -> None:
    """Commit ``runs`` as the room does once they end: a write that holds only runs."""
    info = await registry.store.info(room_id)
    assert info is not None
    await registry.store.commit([RoomWrite(room_id, info.epoch, info.language, head=info.version, runs=runs)])


def test_a_run_reads_its_output_and_tests_joined_and_scored() -> None:
    printed = [["stdout", "a"], ["stdout", "b\n"], ["stderr", "Traceback\n"], ["stdout", "c"]]
    run = run_record("r", 1, output=printed)
    assert [("stdout", "ab\n"), ("stderr", "Traceback\n"), ("stdout", "c")] == run_output(run)
    assert RunSummary(1, "ok", None) == summarize(run) and [] == run_tests(run)
    assert "finished" == summarize(run).describe() and summarize(run).succeeded
    tested = run_record("t", 1, tests=TESTS)
    assert (1, 2) == summarize(tested).score
    assert "finished, 1/2 passed" == summarize(tested).describe() and not summarize(tested).succeeded
    small, empty = run_tests(tested)
    assert (True, "[[2, 7], 9]", "[0, 1]") == (small.passed, small.args, small.expected)
    assert (False, "IndexError: list index out of range") == (empty.passed, empty.error)
    assert "stopped at the time limit" == summarize(run_record("o", 1, status="timeout")).describe()
    assert None is summarize(run_record("l", 1, status="lost", tests=[])).score  # ended before its tests


def test_a_run_ends_in_the_words_of_the_run_panel() -> None:
    script = (Path(__file__).parent.parent / "ui" / "collab_runs.js").read_text()
    endings = re.search(r"const ENDINGS = \{(.*?)\};", script, re.DOTALL)
    assert endings is not None, "ENDINGS not found in ui/collab_runs.js"
    panel = dict(re.findall(r'(\w+): "([^"]*)"', endings.group(1)))
    # Every way a stored run can end, in the same words; the panel has more (states of a page).
    assert set(get_args(RunStatus)) <= set(STATUS_TEXT)
    assert STATUS_TEXT == {status: panel.get(status) for status in STATUS_TEXT}
    assert "failed" == summarize(run_record("e", 1, status="error")).describe()
    assert "lost (the room ended it)" == summarize(run_record("l", 1, status="lost")).describe()


@pytest.mark.parametrize("stored", ["not json", '{"a": 1}', '[["stdout"]]', "[[1, 2]]", "[" * 10_000])
def test_a_run_whose_output_cannot_be_read_shows_none(stored: str) -> None:
    run = run_record("r", 1)
    damaged = RunRecord(*[stored if name in ("output", "tests") else getattr(run, name) for name in run.__slots__])
    assert [] == run_output(damaged)
    assert [] == run_tests(damaged)
    assert None is summarize(damaged).score


def test_the_slider_marks_each_version_run_in_its_range_by_how_its_newest_run_ended() -> None:
    runs = [
        run_record("a", 1, status="error"),
        run_record("b", 3),
        run_record("c", 3, status="error"),
        run_record("d", 5, tests=TESTS),
        run_record("e", 6, tests=TESTS[:1]),
        run_record("f", 9),  # past the head read: not marked
        run_record("g", 0),  # before the oldest version kept: not marked
    ]
    marks = slider_markers(map(summarize, runs), 1, 8)
    assert [(1, MARK), (3, f"{MARK}2"), (5, MARK), (6, MARK)] == [(m["value"], m["label"]) for m in marks]
    assert ["red", "red", "red", "green"] == [re.findall(r"text-(\w+)-700", m["classes"])[0] for m in marks]
    assert [] == slider_markers([], 0, 10)


def run_order(user: User, run_ids: Sequence[str]) -> list[str]:
    """``run_ids`` in the order the run list shows them, top to bottom."""
    return sorted(run_ids, key=lambda run_id: the(user, f"history-run-id-{run_id}").id)


async def test_runs_are_marked_and_listed_and_choosing_one_shows_its_version_and_output(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await enter(ann, "runs", "Ann")
    bob = await writer(registry, "runs", "Bob", "#2563eb")
    await write(registry, bob, TEXTS)
    printed = [["stdout", "3\n"], ["stderr", "Traceback (most recent call last):\n"], ["stderr", "ZeroDivisionError\n"]]
    await store_runs(
        registry,
        "runs",
        [
            run_record("r1", 2, author="<b>Cy</b>", output=[["stdout", "3\n"]]),
            run_record("r2", 2, author="Bob", color="red; x", status="error", output=printed),
            run_record("r3", 4, tests=TESTS),
        ],
    )
    ann.find(marker="history").click()
    await ann.should_see("version 4 of 4", retries=50)
    await until(lambda: "marker-labels" in slider(ann).props, "the runs marked")
    marks = slider(ann).props["marker-labels"]
    assert [(2, f"{MARK}2"), (4, MARK)] == [(mark["value"], mark["label"]) for mark in marks]
    assert ["r3", "r2", "r1"] == run_order(ann, ["r1", "r2", "r3"])  # newest first
    await ann.should_see("<b>Cy</b>", marker="history-runs")  # a name is text
    await ann.should_see("version 4 · Python · tests · finished, 1/2 passed", marker="history-run-summary")

    ann.find(marker="history-run-id-r2").click()
    await until(lambda: TEXTS[1] == code(ann).value, "showing the version run")
    assert 2 == slider(ann).value
    await ann.should_see("failed in 0.12 s", marker="history-run-status")
    await ann.should_see("3\n", marker="history-run-stdout")
    await ann.should_see("Traceback (most recent call last):\nZeroDivisionError\n", marker="history-run-stderr")

    ann.find(marker="history-run-id-r3").click()
    await until(lambda: TEXTS[3] == code(ann).value, "showing the version of the test run")
    await ann.should_see("finished, 1/2 passed in 0.12 s", marker="history-run-status")
    await ann.should_see("No output.", marker="history-run-detail")
    await ann.should_see("small", marker="history-run-test")
    await ann.should_see("expected: [0, 1]")
    await ann.should_see("error: IndexError: list index out of range")
    await ann.should_not_see(marker="history-run-stderr")


async def test_new_runs_are_read_once_they_are_stored_and_never_move_the_slider(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = users()
    await enter(ann, "more-runs", "Ann")
    bob = await writer(registry, "more-runs", "Bob", "#2563eb")
    await write(registry, bob, TEXTS)
    reads: list[int] = []  # the limit of each read of the runs
    runs = registry.store.runs

    async def counted(room_id: str, limit: int) -> list[RunRecord]:
        reads.append(limit)
        return await runs(room_id, limit)

    monkeypatch.setattr(registry.store, "runs", counted)
    ann.find(marker="history").click()
    await ann.should_see("version 4 of 4", retries=50)
    slider(ann).set_value(1)
    await until(lambda: TEXTS[0] == code(ann).value, "showing version 1")
    await ann.should_not_see(marker="history-runs")  # no runs: no list
    await until(lambda: len(reads) >= 2, "the runs polled twice")
    assert "marker-labels" not in slider(ann).props
    assert all(1 == limit for limit in reads)  # only the newest run is read while none changed
    await store_runs(registry, "more-runs", [run_record("late", 3)])
    await until(lambda: "marker-labels" in slider(ann).props, "the new run marked")
    assert [3] == [mark["value"] for mark in slider(ann).props["marker-labels"]]
    await ann.should_see(marker="history-run-id-late")
    assert 1 == slider(ann).value and TEXTS[0] == code(ann).value
    full_reads = len([limit for limit in reads if limit > 1])
    seen = len(reads)
    await until(lambda: len(reads) >= seen + 2, "the runs polled twice more")
    assert full_reads == len([limit for limit in reads if limit > 1])  # nothing changed since


async def test_each_runs_tests_are_parsed_once_however_often_the_view_polls(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = users()
    await enter(ann, "parsed-once", "Ann")
    bob = await writer(registry, "parsed-once", "Bob", "#2563eb")
    await write(registry, bob, TEXTS)
    runs = [run_record(f"t{n}", 1 + n % 4, tests=TESTS[: 1 + n % 2]) for n in range(6)]
    runs.append(run_record("code", 2, output=[["stdout", "printed\n"]]))
    await store_runs(registry, "parsed-once", runs)
    parsed: list[str] = []  # every text of a stored run the view parsed
    parse = history_runs._json

    def counted(text: str) -> object:
        parsed.append(text)
        return parse(text)

    monkeypatch.setattr(history_runs, "_json", counted)
    polls: list[int] = []
    read = registry.store.runs

    async def polled(room_id: str, limit: int) -> list[RunRecord]:
        polls.append(limit)
        return await read(room_id, limit)

    monkeypatch.setattr(registry.store, "runs", polled)
    ann.find(marker="history").click()
    await ann.should_see("version 4 of 4", retries=50)
    await until(lambda: "marker-labels" in slider(ann).props, "the runs marked")
    seen = len(polls)
    await until(lambda: len(polls) >= seen + 3, "the runs polled three times more")
    # Each test run's tests once, for the list and the marks; no output before a run is chosen.
    assert sorted(run.tests for run in runs if run.tests) == sorted(parsed)
    parsed.clear()
    ann.find(marker="history-run-id-code").click()
    await ann.should_see("printed\n", marker="history-run-stdout")
    assert [runs[-1].output] == [text for text in parsed if text]  # the chosen run's output, once
