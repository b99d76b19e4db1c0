"""Pruning Lab: the Streamlit entry point (router + the frame shared by every page)."""

from __future__ import annotations

import streamlit as st

from ui.state import init_state
from ui.widgets import sidebar_frame

st.set_page_config(page_title="Pruning Lab", page_icon="✂️", layout="wide")
init_state()

PAGES = [
    st.Page("pages/1_model_and_data.py", title="Model & data", icon="📦", default=True),
    st.Page("pages/2_inspect.py", title="Inspect", icon="🔍"),
    st.Page("pages/3_prune.py", title="Prune", icon="✂️"),
    st.Page("pages/4_finetune.py", title="Fine-tune", icon="🏋️"),
    st.Page("pages/5_tradeoffs.py", title="Trade-offs", icon="📈"),
    st.Page("pages/6_export.py", title="Export & report", icon="📤"),
]

page = st.navigation(PAGES)
sidebar_frame()
page.run()
