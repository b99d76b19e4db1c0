"""Session state: one place for the keys every page reads, initialised idempotently.

Every page calls `init_state()` first, so a page also works when run on its own (Streamlit's
AppTest runs files in `pages/` without app.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

DEFAULTS: dict[str, Any] = {
    "model_ref": "digits-cnn",
    "dataset_ref": "digits",
    # --- Inspect, Prune, Fine-tune (A1) ---
    "inspect_layer": None,
    "prune_method": "magnitude",
    "prune_granularity": "unstructured",
    "prune_scope": "global",
    "prune_ratio": 0.5,
    "prune_layer": None,
    "prune_estimate": True,
    "prune_estimate_n": 500,
    "ft_schedule": "oneshot",
    "ft_steps": 3,
    "ft_epochs": 2,
    "ft_lr": 0.002,
    "ft_optimizer": "adam",
    "ft_distill": False,
    "ft_distill_weight": 0.5,
    "ft_temperature": 4.0,
    "ft_reg": "none",
    "ft_reg_strength": 0.0001,
    # --- Trade-offs, Export, uploads, lesson (A2) ---
    "tradeoff_methods": ["magnitude", "random"],
    "tradeoff_granularity": "unstructured",
    "tradeoff_ratios": "0.5, 0.7, 0.9",
    "tradeoff_ft_epochs": 1,
    "tradeoff_lat_batch": 32,
    "tradeoff_lat_threads": None,
    "tradeoff_lat_ratios": "0.5, 0.7, 0.9, 0.95",
    "tradeoff_sens_method": "magnitude",
    "tradeoff_sens_ratios": "0.25, 0.5, 0.75, 0.9",
    "tradeoff_compare": [],
    "tradeoff_sweep_job": None,
    "tradeoff_latency_job": None,
    "tradeoff_sensitivity_job": None,
    "export_recipe_format": "json",
    "export_onnx": None,
    "export_report": None,
    "export_upload_arch": None,
    "lesson_step": 0,
}


# Widget keys whose values must survive a visit to a page that does not draw the widget:
# Streamlit forgets the state of widgets not rendered in a run, so without this the model picked
# on page 1 would fall back to the default on every other page.
KEEP: tuple[str, ...] = (
    "model_ref",
    "dataset_ref",
    "inspect_layer",
    "prune_method",
    "prune_granularity",
    "prune_scope",
    "prune_ratio",
    "prune_layer",
    "prune_estimate",
    "prune_estimate_n",
    "ft_schedule",
    "ft_steps",
    "ft_epochs",
    "ft_lr",
    "ft_optimizer",
    "ft_distill",
    "ft_distill_weight",
    "ft_temperature",
    "ft_reg",
    "ft_reg_strength",
)


def init_state() -> None:
    """Set every default key that is missing (safe to call on every run)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value
    for key in KEEP:
        # Re-assigning turns a widget's value into a plain session value, which outlives the
        # widget. Once the widget is drawn in this run it is kept anyway, and Streamlit refuses
        # the assignment: nothing to do then.
        with contextlib.suppress(StreamlitAPIException):
            st.session_state[key] = st.session_state[key]


def selection() -> tuple[str, str]:
    """The (model, dataset) the user picked."""
    init_state()
    return st.session_state["model_ref"], st.session_state["dataset_ref"]
