"""The home page: what the server offers, until the browser editor arrives."""

from __future__ import annotations

from nicegui import ui


@ui.page("/")
def home() -> None:
    ui.page_title("collab pad")
    with ui.column().classes("w-full max-w-2xl mx-auto p-8 gap-4"):
        ui.label("collab pad").classes("text-3xl font-bold")
        ui.label("A real-time collaborative code pad for interviews and pair programming.")
        ui.markdown(
            "Clients connect to a room at `/ws/{room_id}` with the seed protocol "
            "(`join`, `code_change`) or the versioned protocol (`hello`, `push`, `update`). "
            "See `docs/protocol.md`."
        )
        with ui.row().classes("gap-4"):
            ui.link("Health", "/healthz")
            ui.link("Metrics", "/metrics")
