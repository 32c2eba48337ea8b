"""The pages as the NiceGUI `user` simulation runs them, on the registry a test provides, with
the route that opens a private room's link (it sets the room's cookie)."""

from nicegui import app, ui

from api import links
from tests import ui_services
from ui import pages

services = ui_services.current()
pages.register(services)
app.include_router(links.router)
app.state.registry = services.registry()
ui.run(storage_secret="user simulation secret", reconnect_timeout=1)
