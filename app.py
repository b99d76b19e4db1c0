"""Pruning Lab: the Streamlit entry point (router + the frame shared by every page)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.state import init_state, leave_pages_folder_mode
from ui.widgets import sidebar_frame

# The favicon is a file of ours: Streamlit fetches a Material *favicon* from fonts.gstatic.com
# (page and widget icons come from its bundled font), which an offline classroom cannot reach.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="Pruning Lab", page_icon=str(FAVICON), layout="wide")
# A fresh server's first run may be Streamlit's pages/-folder mode with this file as its main
# page: st.navigation below takes over from there, and shows (ui.state explains).
leave_pages_folder_mode(restart=False)
init_state()

# Material icons ship with Streamlit's frontend; emoji need a font the machine may not have.
PAGES = [
    st.Page(
        "pages/1_model_and_data.py", title="Model & data", icon=":material/database:", default=True
    ),
    st.Page("pages/2_inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("pages/3_prune.py", title="Prune", icon=":material/content_cut:"),
    st.Page("pages/4_finetune.py", title="Fine-tune", icon=":material/model_training:"),
    st.Page("pages/5_tradeoffs.py", title="Trade-offs", icon=":material/query_stats:"),
    st.Page("pages/6_export.py", title="Export & report", icon=":material/ios_share:"),
]

page = st.navigation(PAGES)
sidebar_frame()
page.run()
