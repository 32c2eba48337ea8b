"""The run panel under the editor: runs the room's code in this browser and shows every run.

The browser half (``collab_runs.js``) does everything: it runs Python (Pyodide) and JavaScript
in module workers served by `api.runner_files`, talks to the room through the editor's
connection (``window.collabEditor.sendRun``, and the ``collab-run`` window events the editor
dispatches), and shows the output of this page's runs and, live, of everyone else's. This half
only tells it where the runtime is and the room's limits (the welcome repeats them).
"""

from __future__ import annotations

from nicegui import ui

from api.runner_files import PYODIDE_PATH, RUNNER_PATH
from rooms.settings import Settings


class RunPanel(ui.element, component="collab_runs.js"):
    """Run, Run tests, Stop, the input box, the output and test results of the room's runs."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._props["pyodide-url"] = PYODIDE_PATH
        self._props["runner-url"] = RUNNER_PATH
        self._props["timeout-seconds"] = settings.run_timeout_seconds
        self._props["max-output-chars"] = settings.max_run_output_chars
        self.classes("collab-runs")
