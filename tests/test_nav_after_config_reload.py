"""The page links come back after Streamlit re-reads config.toml while the server runs (it
watches the file even with the file watcher off: a `git pull` or an edit), which puts
`client.showSidebarNavigation` back to the file's False once the pages-folder mode is long
left (`ui.state.leave_pages_folder_mode`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest


@pytest.fixture
def config_reloaded() -> Iterator[None]:
    """The server's state after a config.toml re-read: the mode left, the option False."""
    mode, option = PagesManager.uses_pages_directory, st.get_option("client.showSidebarNavigation")
    PagesManager.uses_pages_directory = False
    st.set_option("client.showSidebarNavigation", False)
    yield
    PagesManager.uses_pages_directory = mode
    st.set_option("client.showSidebarNavigation", option)


def _page() -> None:
    import streamlit as st

    from ui.state import leave_pages_folder_mode

    runs = st.session_state["runs"] = st.session_state.get("runs", 0) + 1
    leave_pages_folder_mode()
    st.write(f"runs {runs}")


@pytest.mark.usefixtures("config_reloaded")
def test_the_first_run_after_a_config_reload_turns_the_links_back_on_and_restarts() -> None:
    at = AppTest.from_function(_page).run()
    assert not at.exception, at.exception
    assert st.get_option("client.showSidebarNavigation") is True
    # Restarted once so its own tab gets the links; the next run goes straight on.
    assert at.session_state["runs"] == 2
    at.run()
    assert at.session_state["runs"] == 3
