"""The runs in a room's history: marks on the playback slider and the list of runs.

Every run the room stored (`Store.runs`, a `RunRecord` each) is shown in a list, newest first:
when it started, who ran it, the version of the code it ran, its language and kind, how it
ended and, for a test run, how many tests passed. Choosing one moves the playback to that
version and shows what the run printed and its test results. The versions that were run are
marked under the slider (Quasar's ``marker-labels``), coloured by how their newest run ended.

The view polls the store every second (`HistoryView.poll`); the runs are read again only when
the newest stored run changed, which one row read tells. A stored run never changes, so each
one's tests are read once per view into a `RunSummary` (kept by run id, for the runs read only),
from which every poll marks the slider; a run's output, and its tests in full, are read only
when it is chosen.

A stored run is data from the store: each field is shown as text, its output and tests are
parsed defensively (a record that cannot be read shows no output rather than failing the view),
and colours are used only when they are ``#rrggbb``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from nicegui import ui

from rooms.store import RunRecord, Store, StoreError
from ui.languages import label_for
from ui.question_panel import shown_json

log = structlog.get_logger("collab.ui.history")

# Runs read and shown; the store keeps at most MAX_STORED_RUNS_PER_ROOM (200 by default) anyway.
MAX_RUNS_SHOWN = 200
NO_COLOR = "#9ca3af"
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# How a run ended, in the words of the page's run panel (ENDINGS in ui/collab_runs.js).
STATUS_TEXT = {
    "ok": "finished",
    "error": "failed",
    "timeout": "stopped at the time limit",
    "stopped": "stopped",
    "lost": "lost (the room ended it)",
    "refused": "not run",
}
MARK = "▲"


def safe_color(color: str) -> str:
    """The colour if it is ``#rrggbb``, else a neutral grey: it goes into a style attribute."""
    return color if _COLOR.fullmatch(color) else NO_COLOR


def describe_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)) if seconds else ""


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test of a stored test run, as the history shows it."""

    name: str
    passed: bool
    error: str | None
    args: str  # JSON text, cut as `shown_json` does
    expected: str
    actual: str


def run_output(run: RunRecord) -> list[tuple[str, str]]:
    """What a run printed, as (stream, text) with consecutive pieces of one stream joined."""
    output: list[tuple[str, str]] = []
    pieces = _json(run.output)
    for piece in pieces if isinstance(pieces, list) else ():
        if not (isinstance(piece, list) and len(piece) == 2 and all(isinstance(part, str) for part in piece)):
            continue
        stream, text = piece
        if output and output[-1][0] == stream:
            output[-1] = (stream, output[-1][1] + text)
        else:
            output.append((stream, text))
    return output


def _test_entries(run: RunRecord) -> list[dict[str, Any]]:
    tests = _json(run.tests)
    return [test for test in tests if isinstance(test, dict)] if isinstance(tests, list) else []


def run_tests(run: RunRecord) -> list[TestResult]:
    """The tests of a test run (none for a run of the code)."""
    results = []
    for test in _test_entries(run):
        error = test.get("error")
        results.append(
            TestResult(
                str(test.get("name", "")),
                test.get("passed") is True,
                error if isinstance(error, str) else None,
                shown_json(test.get("args")),
                shown_json(test.get("expected")),
                shown_json(test.get("actual")),
            )
        )
    return results


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended, as the list and the slider show it: `summarize` reads it from the run's
    record, whose tests it parses, once."""

    version: int
    status: str
    # (passed, total) of a test run; None for a run of the code, or one that ended before its
    # tests did (lost, stopped).
    score: tuple[int, int] | None

    @property
    def succeeded(self) -> bool:
        return self.status == "ok" and (self.score is None or self.score[0] == self.score[1])

    def describe(self) -> str:
        """How the run ended, in a few words: "finished, 3/4 passed"."""
        text = STATUS_TEXT.get(self.status, self.status)
        return text if self.score is None else f"{text}, {self.score[0]}/{self.score[1]} passed"


def summarize(run: RunRecord) -> RunSummary:
    tests = _test_entries(run) if run.kind == "tests" else []
    score = (sum(test.get("passed") is True for test in tests), len(tests)) if tests else None
    return RunSummary(run.version, run.status, score)


def slider_markers(runs: Iterable[RunSummary], oldest: int, newest: int) -> list[dict[str, Any]]:
    """Quasar's ``marker-labels`` for the versions that were run within the slider's range:
    one mark per version, coloured by how its newest run ended, counting its runs."""
    by_version: dict[int, list[RunSummary]] = {}
    for run in runs:
        if oldest <= run.version <= newest:
            by_version.setdefault(run.version, []).append(run)
    markers = []
    for version, ran in sorted(by_version.items()):
        last = ran[-1]  # runs are oldest first
        tone = "text-green-700" if last.succeeded else "text-red-700"
        label = MARK if len(ran) == 1 else f"{MARK}{len(ran)}"
        markers.append({"value": version, "label": label, "classes": f"collab-history-run-mark {tone}"})
    return markers


def _run_id(run: RunRecord | None) -> str | None:
    return run.run_id if run is not None else None


class HistoryRuns:
    """The runs of one history view: `refresh` reads them, the panel lists them, and choosing
    one calls ``go_to`` with its version (True: the playback shows it) and shows its output."""

    def __init__(self, store: Store, room_id: str, *, go_to: Callable[[int], bool]) -> None:
        self.store = store
        self.room_id = room_id
        self.go_to = go_to
        self.runs: list[RunRecord] = []  # oldest first, as the store gives them
        # One per run read, in the same order: a run read again keeps its summary.
        self.summaries: dict[str, RunSummary] = {}
        self.newest: RunRecord | None = None
        self.chosen: RunRecord | None = None
        with ui.column().classes("collab-history-runs gap-1 no-wrap min-h-0 overflow-auto") as self.panel:
            self.panel.classes("w-full md:w-96 shrink-0 max-h-[40%] md:max-h-full").mark("history-runs")
            ui.label("Runs").classes("font-medium")
            self.list = ui.list().props("dense separator").classes("w-full").mark("history-run-list")
            self.detail = ui.column().classes("w-full gap-1").mark("history-run-detail")
        self.panel.set_visibility(False)

    async def refresh(self) -> bool:
        """Read the runs again if the newest stored run changed; True when they were. Raises
        `StoreError` when the store fails."""
        probe = await self.store.runs(self.room_id, 1)
        newest = probe[-1] if probe else None
        if _run_id(newest) == _run_id(self.newest):  # a stored run never changes: its id tells
            return False
        self.runs = await self.store.runs(self.room_id, MAX_RUNS_SHOWN)
        self.newest = self.runs[-1] if self.runs else None
        known = self.summaries
        self.summaries = {run.run_id: known.get(run.run_id) or summarize(run) for run in self.runs}
        self.draw_list()
        return True

    async def poll(self, slider: ui.slider, oldest: int, newest: int) -> None:
        """Follow the store's runs, and mark the slider's range [oldest, newest] with them."""
        try:
            await self.refresh()
        except StoreError:
            log.warning("history_runs_unavailable", room_id=self.room_id, exc_info=True)
            return  # the runs wait for the next poll
        markers = slider_markers(self.summaries.values(), oldest, newest)
        if markers != slider.props.get("marker-labels", []):
            if markers:
                slider.props["marker-labels"] = markers
            else:
                slider.props.pop("marker-labels", None)  # no room taken under the track
            slider.update()

    def draw_list(self) -> None:
        self.panel.set_visibility(bool(self.runs))
        self.list.clear()
        with self.list:
            for run in reversed(self.runs):
                self._draw_run(run)

    def _draw_run(self, run: RunRecord) -> None:
        summary = self.summaries[run.run_id]
        succeeded = summary.succeeded
        item = ui.item(on_click=lambda: self.choose(run)).classes("collab-history-run")
        with item.mark(f"history-run-id-{run.run_id}"):
            with ui.item_section().props("avatar"):
                ui.icon("check_circle" if succeeded else "error").classes(
                    "text-green-700" if succeeded else "text-red-700"
                )
            with ui.item_section():
                with ui.row().classes("items-center gap-1 no-wrap text-sm"):
                    ui.element("span").classes("inline-block w-2 h-2 rounded-full shrink-0").style(
                        f"background: {safe_color(run.color)}"
                    )
                    ui.label(run.author or "unknown").classes("truncate font-medium")
                    ui.label(time.strftime("%H:%M:%S UTC", time.gmtime(run.started))).classes("text-gray-500")
                line = f"version {run.version} · {label_for(run.language)} · {run.kind} · {summary.describe()}"
                ui.label(line).classes("text-xs text-gray-600").mark("history-run-summary")

    def choose(self, run: RunRecord) -> None:
        """Show the run's output and tests, and its version in the playback."""
        self.chosen = run
        summary = self.summaries.get(run.run_id) or summarize(run)  # a run the list dropped meanwhile
        shown = self.go_to(run.version)
        self.detail.clear()
        with self.detail:
            ui.separator()
            ui.label(f"{run.author or 'unknown'} ran version {run.version}").classes("font-medium")
            when = f"{describe_time(run.started)} · {label_for(run.language)} · {run.kind}"
            ui.label(when).classes("text-xs text-gray-500")
            ui.label(f"{summary.describe()} in {run.duration_ms / 1000:.2f} s").classes("text-sm").mark(
                "history-run-status"
            )
            if not shown:
                ui.label(f"Version {run.version} is no longer kept in the history.").classes("text-xs text-amber-700")
            self._draw_output(run)
            self._draw_tests(run)

    def _draw_output(self, run: RunRecord) -> None:
        output = run_output(run)
        with ui.column().classes("w-full gap-0 font-mono text-xs rounded p-2 bg-gray-100 text-gray-900"):
            if not output:
                ui.label("No output.").classes("text-gray-500")
            for stream, text in output:
                piece = ui.label(text).classes("whitespace-pre-wrap break-all")
                piece.classes("text-red-700" if stream == "stderr" else "").mark(f"history-run-{stream}")
        if run.truncated:
            ui.label("The output was cut: the room keeps a limited amount of each run's output.").classes(
                "text-xs text-amber-700"
            )

    def _draw_tests(self, run: RunRecord) -> None:
        for test in run_tests(run):
            with ui.column().classes("w-full gap-0 collab-history-run-test").mark("history-run-test"):
                with ui.row().classes("items-center gap-1 no-wrap"):
                    ui.icon("check" if test.passed else "close").classes(
                        "text-green-700" if test.passed else "text-red-700"
                    )
                    ui.label(test.name).classes("text-sm font-medium")
                ui.label(f"args: {test.args}").classes("font-mono text-xs break-all")
                ui.label(f"expected: {test.expected}").classes("font-mono text-xs break-all")
                if test.error is not None:
                    ui.label(f"error: {test.error}").classes("font-mono text-xs break-all text-red-700")
                else:
                    ui.label(f"actual: {test.actual}").classes("font-mono text-xs break-all")
