"""The pages as the NiceGUI `user` simulation runs them, on the registry a test provides."""

from nicegui import ui

from tests import ui_services
from ui import pages

pages.register(ui_services.current())
ui.run(storage_secret="user simulation secret", reconnect_timeout=1)
