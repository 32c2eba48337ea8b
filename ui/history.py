"""A room's history, played back in the browser beside the live editor.

The view reads the store only (`Store.info`, `Store.history`, `Store.text_at`): it shows
committed versions, the ones every member has seen, and never touches the room in memory. The
live editor behind it keeps running. Restoring a version is an edit like any other
(`RoomRegistry.restore`): a new version whose text is the old one, so history is only appended to.

Memory per open view is bounded however long the history is: `Playback` keeps the text of the
version shown, and of at most ``MAX_CHECKPOINTS`` versions that are multiples of
``CHECKPOINT_EVERY``, oldest-used first out. Any version is reached from a text at most
``CHECKPOINT_EVERY`` versions before it (a checkpoint, the version shown, or one the store
gives with `Store.text_at`) with at most that many records applied.

Every name is shown as text (``ui.label``); colours from the store are used only when they are
``#rrggbb``. The runs the room stored are marked on the slider and listed beside the code
(`ui.history_runs`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast, get_args

import structlog
from nicegui import background_tasks, ui
from nicegui.elements.codemirror.constants import SUPPORTED_LANGUAGES

from rooms.access import Act, Role, allowed
from rooms.changes import ChangeSet, utf16_to_index
from rooms.errors import RoomError
from rooms.registry import RoomRegistry
from rooms.room_messages import RESTORE_CLIENT
from rooms.store import HistoryUnavailable, Record, RoomInfo, Store, StoreError
from ui.editor import CollabEditor
from ui.history_runs import NO_COLOR, HistoryRuns, describe_time, safe_color
from ui.languages import label_for

log = structlog.get_logger("collab.ui.history")

CHECKPOINT_EVERY = 100
MAX_CHECKPOINTS = 32
AUTHORS_PAGE = 500  # records read per query while counting the authors
MAX_MARKS = 50  # inserted ranges highlighted per step; a paste of many lines is one
POLL_SECONDS = 1.0
# Playback speeds in versions per second. The view is redrawn at most this often: faster speeds
# take several versions per frame, so a large document is not sent to the browser 64 times a second.
SPEEDS = {1: "1 version/s", 4: "4 versions/s", 16: "16 versions/s", 64: "64 versions/s"}
DEFAULT_SPEED = 4
MAX_FRAMES_PER_SECOND = 8
LEGEND_SIZE = 12  # authors named in the legend; the others are counted
_CODEMIRROR_LANGUAGES: frozenset[str] = frozenset(get_args(SUPPORTED_LANGUAGES))


def codemirror_language(language: str) -> SUPPORTED_LANGUAGES | None:
    """The name `ui.codemirror` knows the room's language by (None: plain text)."""
    for name in (label_for(language), language):
        for known in _CODEMIRROR_LANGUAGES:
            if known.lower() == name.lower():
                return cast(SUPPORTED_LANGUAGES, known)
    return None


def inserted_ranges(changes: ChangeSet, text: str) -> tuple[tuple[int, int], ...]:
    """Where ``changes`` inserted text in ``text`` (the text after them), as ``str`` indices."""
    ranges = [(from_b, to_b) for _, _, from_b, to_b, _ in changes.iter_changes() if to_b > from_b]
    return tuple((utf16_to_index(text, start), utf16_to_index(text, end)) for start, end in ranges[:MAX_MARKS])


@dataclass(frozen=True, slots=True)
class Frame:
    """One version as the view shows it."""

    version: int
    text: str
    # The update that made this version; None for the oldest version kept (its update is not).
    record: Record | None = None
    changed: tuple[tuple[int, int], ...] = ()  # what that update inserted, as `str` ranges of `text`


class Playback:
    """The texts of a room's stored versions, computed forward from nearby ones.

    Not safe for concurrent `frame` calls (the view makes one at a time); `count_authors` may
    run beside them.
    """

    def __init__(
        self,
        store: Store,
        room_id: str,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        max_checkpoints: int = MAX_CHECKPOINTS,
    ) -> None:
        self.store = store
        self.room_id = room_id
        self.checkpoint_every = checkpoint_every
        self.max_checkpoints = max_checkpoints
        self.info: RoomInfo | None = None
        self.checkpoints: OrderedDict[int, str] = OrderedDict()  # least recently used first
        self.shown: Frame | None = None
        # (name, colour) -> updates, for the versions up to `counted`.
        self.authors: dict[tuple[str, str], int] = {}
        self.counted = 0

    async def refresh(self) -> RoomInfo | None:
        """Read the room's head and oldest kept version again; None while it was never stored."""
        self.info = await self.store.info(self.room_id)
        if self.info is not None:
            oldest = self.info.oldest
            for version in [v for v in self.checkpoints if v < oldest]:
                del self.checkpoints[version]
        return self.info

    async def frame(self, version: int) -> Frame:
        """The text at ``version``, the update that made it, and what it inserted.

        Raises `HistoryUnavailable` for a version outside the kept range (as last read with
        `refresh`), `StoreError` when the store fails.
        """
        info = self.info
        if info is None:
            raise HistoryUnavailable(version, 0, 0)
        if not info.oldest <= version <= info.version:
            raise HistoryUnavailable(version, info.oldest, info.version)
        if self.shown is not None and self.shown.version == version:
            return self.shown
        if version == info.oldest:
            frame = Frame(version, await self._text(version))
        else:
            base, text = await self._start(version)
            records = await self.store.history(self.room_id, base, version - base)
            if [record.version for record in records] != list(range(base + 1, version + 1)):
                # The store let go of these versions since `refresh` (HISTORY_KEEP_VERSIONS).
                raise HistoryUnavailable(version, info.oldest, info.version)
            changes = ChangeSet.empty(0)
            for record in records:
                changes = record.change_set()
                text = changes.apply(text)
                if record.version % self.checkpoint_every == 0:
                    self._keep(record.version, text)
            frame = Frame(version, text, records[-1], inserted_ranges(changes, text))
        self.shown = frame
        return frame

    async def _start(self, version: int) -> tuple[int, str]:
        """A version before ``version``, at most `checkpoint_every` before it, and its text."""
        assert self.info is not None
        best: tuple[int, str] | None = None
        nearby = [(v, t) for v, t in self.checkpoints.items() if v < version <= v + self.checkpoint_every]
        if self.shown is not None and self.shown.version < version <= self.shown.version + self.checkpoint_every:
            nearby.append((self.shown.version, self.shown.text))
        for candidate in nearby:
            if best is None or candidate[0] > best[0]:
                best = candidate
        if best is not None:
            if best[0] in self.checkpoints:
                self.checkpoints.move_to_end(best[0])
            return best
        base = max(self.info.oldest, (version - 1) // self.checkpoint_every * self.checkpoint_every)
        return base, await self._text(base)

    async def _text(self, version: int) -> str:
        text = self.checkpoints.get(version)
        if text is None:
            text = await self.store.text_at(self.room_id, version)
            self._keep(version, text)
        else:
            self.checkpoints.move_to_end(version)
        return text

    def _keep(self, version: int, text: str) -> None:
        self.checkpoints[version] = text
        self.checkpoints.move_to_end(version)
        while len(self.checkpoints) > self.max_checkpoints:
            self.checkpoints.popitem(last=False)

    async def count_authors(self) -> bool:
        """Count the authors of the versions stored since the last count; True if any were new."""
        if self.info is None:
            return False
        changed = False
        while self.counted < self.info.version:
            page = await self.store.history(self.room_id, self.counted, AUTHORS_PAGE)
            if not page:
                break
            for record in page:
                key = (record.author, safe_color(record.color))
                self.authors[key] = self.authors.get(key, 0) + 1
            changed = True
            self.counted = page[-1].version
        return changed


def open_history(
    registry: RoomRegistry, room_id: str, editor: CollabEditor, *, role: Role | None, language: str, dark: bool
) -> ui.dialog | None:
    """Open the history of the room in a dialog over the page; it is deleted when closed. None
    (and a notice) for a member whose ``role`` may not read the history: the page offers it to
    no such member, and this says no again should one ask anyway."""
    if not allowed(role, Act.HISTORY):
        ui.notify("Only interviewers can play back the history of this room.", type="warning")
        return None
    view = HistoryView(registry, room_id, editor, language=language, dark=dark)
    view.dialog.open()
    return view.dialog


class HistoryView:
    """The dialog: a read-only code view, a slider over the stored versions, play and restore."""

    def __init__(
        self, registry: RoomRegistry, room_id: str, editor: CollabEditor, *, language: str, dark: bool
    ) -> None:
        self.registry = registry
        self.room_id = room_id
        self.editor = editor
        self.language = language
        self.playback = Playback(registry.store, room_id)
        self.target: int | None = None  # the version asked for; `rendered` catches up with it
        self.rendered: Frame | None = None
        self.loader: asyncio.Task[None] | None = None
        self.playing = False
        self.per_tick = 1

        self.dialog = ui.dialog().props("maximized")
        self.dialog.on_value_change(lambda event: None if event.value else self.dialog.delete())
        with self.dialog, ui.card().classes("w-full h-full no-wrap gap-2 p-3 collab-history") as self.card:
            with ui.row().classes("w-full items-center gap-2 no-wrap"):
                ui.icon("history").classes("text-2xl")
                ui.label("History").classes("text-lg font-medium")
                ui.label(room_id).classes("font-mono text-sm opacity-70")
                ui.space()
                ui.button(icon="close", on_click=self.dialog.close).props("flat dense round").mark(
                    "history-close"
                ).tooltip("Back to the live editor")
            self.status = ui.label("Loading the history…").classes("text-gray-500").mark("history-status")
            with ui.column().classes("w-full grow no-wrap gap-2 min-h-0") as self.player:
                with ui.row().classes("w-full items-center gap-2 no-wrap"):
                    self.play_button = (
                        ui.button(icon="play_arrow", on_click=self.toggle_play)
                        .props("round dense unelevated")
                        .mark("history-play")
                        .tooltip("Play or pause")
                    )
                    ui.button(icon="skip_previous", on_click=lambda: self.step(-1)).props("flat dense round").mark(
                        "history-back"
                    ).tooltip("One version back")
                    ui.button(icon="skip_next", on_click=lambda: self.step(1)).props("flat dense round").mark(
                        "history-forward"
                    ).tooltip("One version on")
                    self.speed = (
                        ui.select(SPEEDS, value=DEFAULT_SPEED, on_change=lambda e: self.set_speed(e.value))
                        .props("dense options-dense borderless")
                        .classes("w-36")
                        .mark("history-speed")
                    )
                    self.slider = (
                        ui.slider(min=0, max=1, step=1, value=None, on_change=lambda e: self.request(e.value))
                        .props("label")
                        .classes("grow mx-2")
                        .mark("history-slider")
                    )
                    restore = ui.button("Restore this version", icon="restore", on_click=self.ask_restore)
                    restore.props("outline no-caps no-wrap").classes("shrink-0").mark("history-restore")
                with ui.row().classes("w-full items-center gap-2 no-wrap text-sm"):
                    self.version_label = ui.label().classes("font-medium").mark("history-version")
                    self.author_row = ui.row().classes("items-center gap-1 no-wrap")
                    with self.author_row:
                        ui.label("·")
                        self.author_dot = ui.element("span").classes("inline-block w-3 h-3 rounded-full shrink-0")
                        self.author_label = ui.label().mark("history-author")
                    self.time_label = ui.label().classes("text-gray-500").mark("history-time")
                with ui.element("div").classes("w-full flex flex-col md:flex-row gap-2 no-wrap") as body:
                    body.style("flex: 1 1 0; min-height: 0")
                    self.code = (
                        ui.codemirror(
                            "",
                            language=codemirror_language(language),
                            theme="oneDark" if dark else "basicLight",
                        )
                        .classes("w-full collab-history-code")
                        .style("flex: 1 1 0; min-height: 0; min-width: 0; height: auto")
                        .mark("history-code")
                    )
                    self.runs = HistoryRuns(registry.store, room_id, go_to=self.go_to)
                self.code.disable()  # read-only: the live editor is where the text is changed
                self.legend = ui.row().classes("w-full items-center gap-3 text-sm").mark("history-legend")
            self.player.set_visibility(False)
            ui.timer(POLL_SECONDS, self.poll)
            self.ticker = ui.timer(1.0, self.tick, active=False)
        self.set_speed(DEFAULT_SPEED)

    # Reading the store

    async def poll(self) -> None:
        """Follow the store: new versions extend the slider, never move it."""
        try:
            info = await self.playback.refresh()
        except StoreError:
            # The store's message names server files: it is logged, the user gets the gist.
            log.warning("history_unavailable", room_id=self.room_id, exc_info=True)
            self.status.set_text("The history cannot be read right now; it is retried every second.")
            self.status.set_visibility(True)
            return
        if info is None or info.version == 0:
            self.status.set_text("There is no history yet: nothing has been written in this room.")
            return
        self.status.set_visibility(False)
        if (self.slider.props["min"], self.slider.props["max"]) != (info.oldest, info.version):
            self.slider.props.update(min=info.oldest, max=info.version)
        if info.language != self.language:
            self.language = info.language
            self.code.set_language(codemirror_language(info.language))
        if not self.player.visible:
            self.player.set_visibility(True)
            self.slider.set_value(info.version)  # opens at the text as it is now
        elif self.rendered is not None:
            self.describe(self.rendered)
        await self.runs.poll(self.slider, info.oldest, info.version)
        try:
            if await self.playback.count_authors():
                self.draw_legend()
        except StoreError:
            pass  # the legend waits for the next poll

    def request(self, value: float | None) -> None:
        """Show this version once it is computed; a later request replaces an unfinished one."""
        if value is None:
            return
        self.target = int(value)
        if self.loader is None or self.loader.done():
            self.loader = background_tasks.create(self._load(), name=f"collab-history-{self.room_id}")

    async def _load(self) -> None:
        while True:
            target = self.target
            if target is None or self.closed() or (self.rendered is not None and self.rendered.version == target):
                return
            try:
                frame = await self.playback.frame(target)
            except (StoreError, RoomError) as error:
                # A damaged record is `InvalidChanges`; a version let go of is `HistoryUnavailable`.
                log.warning("history_version_unavailable", room_id=self.room_id, version=target, exc_info=True)
                reason = str(error) if isinstance(error, HistoryUnavailable) else "it cannot be read right now"
                if not self.closed():
                    self.pause()
                    with self.card:
                        ui.notify(f"Version {target} cannot be shown: {reason}", type="warning")
                self.target = None
                return
            if not self.closed():
                self.show(frame)

    def closed(self) -> bool:
        return self.dialog.is_deleted

    def show(self, frame: Frame) -> None:
        self.rendered = frame
        color = safe_color(frame.record.color) if frame.record is not None else NO_COLOR
        self.code.set_value(frame.text)
        # Marks carry the author's colour at a quarter opacity (#rrggbb40) as an inline style;
        # the colour is checked by `safe_color`, since attributes are not sanitised.
        self.code.decorations = [
            {"kind": "mark", "from": start, "to": end, "class": "collab-history-change",
             "attributes": {"style": f"background-color: {color}40"}}
            for start, end in frame.changed
        ]  # fmt: skip
        if frame.changed:
            start = frame.changed[0][0]
            self.code.reveal_line(frame.text.count("\n", 0, start) + 1)
        self.describe(frame)

    def describe(self, frame: Frame) -> None:
        head = self.playback.info.version if self.playback.info is not None else frame.version
        self.version_label.set_text(f"version {frame.version} of {head}")
        record = frame.record
        self.author_row.set_visibility(record is not None)
        if record is None:
            self.time_label.set_text("· the empty start" if frame.version == 0 else "· the oldest version kept")
            return
        self.author_dot.style(f"background: {safe_color(record.color)}")
        name = record.author or "unknown"
        self.author_label.set_text(f"{name} (restored a version)" if record.client_id == RESTORE_CLIENT else name)
        self.time_label.set_text(f"· {describe_time(record.time)}" if record.time else "")

    def draw_legend(self) -> None:
        self.legend.clear()
        ranked = sorted(self.playback.authors.items(), key=lambda item: -item[1])
        with self.legend:
            ui.label("Written by").classes("text-gray-500")
            for (name, color), count in ranked[:LEGEND_SIZE]:
                with ui.row().classes("items-center gap-1 no-wrap collab-history-author"):
                    ui.element("span").classes("inline-block w-3 h-3 rounded-full shrink-0").style(
                        f"background: {color}"
                    )
                    ui.label(name or "unknown")
                    ui.label(f"({count})").classes("text-gray-500")
            if len(ranked) > LEGEND_SIZE:
                ui.label(f"and {len(ranked) - LEGEND_SIZE} more").classes("text-gray-500")

    # Moving

    def step(self, by: int) -> None:
        info = self.playback.info
        if info is None or self.slider.value is None:
            return
        self.pause()
        self.slider.set_value(min(info.version, max(info.oldest, int(self.slider.value) + by)))

    def go_to(self, version: int) -> bool:
        """Show ``version`` (a run's): False when the history no longer keeps it."""
        info = self.playback.info
        if info is None or not info.oldest <= version <= info.version:
            return False
        self.pause()
        self.slider.set_value(version)
        return True

    def set_speed(self, speed: int) -> None:
        interval = max(1 / speed, 1 / MAX_FRAMES_PER_SECOND)
        self.per_tick = max(1, round(speed * interval))
        self.ticker.interval = interval

    def toggle_play(self) -> None:
        if self.playing:
            self.pause()
            return
        info = self.playback.info
        if info is None or self.slider.value is None:
            return
        if int(self.slider.value) >= info.version:
            self.slider.set_value(info.oldest)  # at the head, play starts over
        self.playing = True
        self.play_button.props("icon=pause")
        self.ticker.activate()

    def pause(self) -> None:
        self.playing = False
        self.play_button.props("icon=play_arrow")
        self.ticker.deactivate()

    def tick(self) -> None:
        info = self.playback.info
        if info is None or self.slider.value is None:
            return
        if self.loader is not None and not self.loader.done():
            return  # the previous step is still being read: no pile-up on a slow store
        following = min(info.version, int(self.slider.value) + self.per_tick)
        if following >= info.version:
            self.pause()
        self.slider.set_value(following)

    # Restoring

    def ask_restore(self) -> None:
        frame = self.rendered
        if frame is None or frame.version != self.target:
            ui.notify("The version is still being read; try again in a moment.", type="info")
            return
        self.pause()
        with self.card, ui.dialog() as confirm, ui.card().classes("w-[32rem] max-w-full gap-3"):
            confirm.on_value_change(lambda event: None if event.value else confirm.delete())
            ui.label(f"Restore version {frame.version}?").classes("text-lg font-medium")
            ui.label(
                "The room's text becomes the text of this version, as a new version made by you: everyone "
                "in the room sees the change, and every version stays in the history."
            ).classes("text-sm")
            with ui.row().classes("w-full justify-end gap-2"):
                ui.button("Cancel", on_click=confirm.close).props("flat")
                ui.button("Restore", on_click=lambda: self.restore(frame, confirm)).mark("history-restore-confirm")
        confirm.open()

    def restore(self, frame: Frame, confirm: ui.dialog) -> None:
        confirm.close()
        with self.card:  # the confirmation is gone: its notices show from the view
            session = self.editor.session
            if session is None or session.closed:
                ui.notify("Not connected: the version cannot be restored right now.", type="warning")
                return
            try:
                update = self.registry.revert(session, frame.version, frame.text)
            except RoomError as error:
                ui.notify(str(error), type="warning")
                return
            if update is None:
                ui.notify(f"The room's text already is the text of version {frame.version}.")
            else:
                # The new version reaches this view like any other: the slider grows, it does not move.
                # Shown once it is committed, as every update; a failed commit resets the room.
                ui.notify(f"Restoring version {frame.version} as version {update.version}.", type="positive")
