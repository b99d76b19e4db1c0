"""Page 1: pick a model and a dataset; see the baseline accuracy, size, cost and latency, and
the dense model's latency in eager PyTorch against ONNX Runtime over batch sizes."""

from __future__ import annotations

import streamlit as st

from pruning_core.plots import confusion_figure, per_class_figure
from ui.latency_panel import dense_latency_panel
from ui.lesson import lesson_panel
from ui.runtime_panel import runtime_sweep_panel
from ui.state import init_state
from ui.uploads import upload_panel
from ui.widgets import baseline_or_stop, model_and_data_picker

init_state()
st.title("Model & data")
st.caption(
    "Pick what to prune. Everything below is measured on this machine, now: accuracy on the "
    "held-out split, parameters, multiply-accumulates (MACs) per image, size and latency."
)
lesson_panel()
# The upload panel's buttons change the selection through callbacks, so it comes before the picker.
upload_panel()
model_ref, dataset_ref = model_and_data_picker()

base = baseline_or_stop(model_ref, dataset_ref)

c = st.columns(5)
c[0].metric("Accuracy (top-1)", f"{base['accuracy']:.2%}", help=f"on {base['n']} held-out images")
c[1].metric("Top-5", f"{base['top5']:.2%}")
c[2].metric("Parameters", f"{base['params']:,}")
c[3].metric("MACs / image", f"{base['macs']:,}")
c[4].metric("Size (fp32)", f"{base['size_bytes'] / 1024:,.1f} KiB")

left, right = st.columns(2)
with left:
    dense_latency_panel(model_ref)
with right:
    st.plotly_chart(per_class_figure(base["per_class"], base["class_names"]), key="per_class_chart")
runtime_sweep_panel(model_ref)
with st.expander("Confusion matrix"):
    st.plotly_chart(confusion_figure(base["confusion"], base["class_names"]), key="confusion_chart")
