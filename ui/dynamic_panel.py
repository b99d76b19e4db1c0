"""The Inspect page's dynamic-pruning panel: pick a validation image, see which channels it used.

The gating runs on the dense shared model through `pruning_core.dynamic` (a private copy per
session: the shared model is never touched); the validation averages are measured once per
server and keep share. Figures come from `pruning_core.plots_dynamic`.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from pruning_core.dynamic import (
    DynamicConfig,
    DynamicModel,
    DynamicReport,
    gateable_layers,
    image_usage,
    measure_dynamic,
)
from pruning_core.errors import UserError
from pruning_core.plots_dynamic import channel_use_figure, skipped_share_figure
from ui.loaders import shared_data, shared_model
from ui.state import session_cached
from ui.texts_dynamic import DYNAMIC_EXPLAINED, DYNAMIC_NO_CONVS, DYNAMIC_NO_SPEEDUP

__all__ = ["AVERAGE_IMAGES", "dynamic_panel"]

# Validation images the averages are measured on (the first ones of the split).
AVERAGE_IMAGES = 500


@st.cache_data(show_spinner="Gating the validation images...", max_entries=32)
def _average(model_ref: str, dataset_ref: str, keep: float) -> DynamicReport:
    """Accuracy, effective MACs and channel use over the first validation images (per server:
    it depends only on the shared dense model)."""
    loaded = shared_model(model_ref)
    return measure_dynamic(
        loaded.model,
        shared_data(dataset_ref),
        loaded.spec,
        DynamicConfig(keep=keep),
        limit=AVERAGE_IMAGES,
    )


def _gated(model_ref: str, keep: float) -> DynamicModel:
    """This session's gated copy (one at a time)."""
    loaded = shared_model(model_ref)
    return session_cached(
        "_dynamic_model",
        (model_ref, keep),
        lambda: DynamicModel(loaded.model, DynamicConfig(keep=keep), loaded.spec),
    )


def dynamic_panel(model_ref: str, dataset_ref: str) -> None:
    """Draw the panel: keep slider, image picker, channel-use heatmap, skipped share and MACs
    of the image against the validation average, and what dynamic pruning is."""
    st.subheader("Dynamic pruning: which channels one image uses")
    st.markdown(DYNAMIC_EXPLAINED)
    loaded, data = shared_model(model_ref), shared_data(dataset_ref)
    try:
        gateable_layers(loaded.model)
    except UserError:
        st.info(DYNAMIC_NO_CONVS)
        return
    c1, c2 = st.columns(2)
    keep = c1.slider(
        "Share of channels computed per layer (keep)",
        min_value=0.1,
        max_value=1.0,
        value=0.5,
        step=0.05,
        key="dynamic_keep",
        help="Each gated convolution computes the top ceil(keep x channels) output channels "
        "for each image and outputs zeros for the rest.",
    )
    n_val = data.num_examples("val")
    index = int(
        c2.number_input(
            f"Validation image (0 to {n_val - 1:,})",
            min_value=0,
            max_value=n_val - 1,
            value=0,
            step=1,
            key="dynamic_image",
        )
    )
    keep = round(float(keep), 2)
    try:
        report = _average(model_ref, dataset_ref, keep)
        dyn = _gated(model_ref, keep)
        x, y = data.tensors("val", loaded.spec, limit=index + 1)
        one = image_usage(dyn, x[index])
    except UserError as e:
        st.error(f"Cannot gate this model: {e}")
        return
    if not one.masks:
        st.info("With keep 1.0 every channel is computed: this is the dense model.")
        return
    names = list(data.class_names)
    pred = int(np.argmax(one.logits))
    left, right = st.columns([1, 3])
    with left:
        raw = data.val[0][index]
        picture = raw.permute(1, 2, 0).numpy() if raw.shape[0] == 3 else raw[0].numpy()
        st.image(picture, width=160, clamp=True)
        st.caption(
            f"Label **{names[int(y[index])]}**; gated model says **{names[pred]}**."
            if names
            else f"Label {int(y[index])}; gated model says {pred}."
        )
    with right:
        m1, m2, m3 = st.columns(3)
        m1.metric(
            "Effective MACs, this image",
            f"{one.macs / 1e6:.2f} M",
            f"{one.macs / one.dense_macs - 1:+.0%} vs dense",
            delta_color="off",
        )
        m2.metric(
            f"Average over {report.n:,} images",
            f"{report.mean_macs / 1e6:.2f} M",
            f"dense {report.dense_macs / 1e6:.2f} M",
            delta_color="off",
        )
        m3.metric(
            "Gated accuracy (same images)",
            f"{report.accuracy:.1%}",
            f"{report.skipped:.0%} of gated channels skipped",
            delta_color="off",
        )
        st.caption(
            "Top-k gates compute the same number of channels for every image, so every image "
            "costs the same effective MACs; which channels it computes is what changes. "
            "Accuracy is before any training or BatchNorm re-estimation. " + DYNAMIC_NO_SPEEDUP
        )
    gated = report.layers[report.layers["gated"]]
    share = gated["macs_dense"].sum() / report.dense_macs
    st.caption(
        f"Gated: {len(gated)} convolution{'s' if len(gated) != 1 else ''} holding {share:.0%} "
        "of the model's dense MACs; everything else (Linear layers, attention, the classifier) "
        "always runs in full."
    )
    st.plotly_chart(
        channel_use_figure(
            one.masks,
            f"Channels computed for validation image {index} (keep {keep:.0%})",
            usage=report.usage,
        ),
        key="dynamic_heatmap",
    )
    frame = one.frame()
    mean = report.layers.set_index("layer")["skipped"]
    frame = frame.assign(skipped_mean=[float(mean.get(n, np.nan)) for n in frame["layer"]])
    st.plotly_chart(
        skipped_share_figure(frame, f"Share of channels skipped per layer, image {index}"),
        key="dynamic_skipped",
    )
    common = _most_used(report.usage, one.masks)
    st.caption(
        f"Of the channels this image computed, {common:.0%} are also among the most used over "
        f"the {report.n:,} validation images (hover a cell for how often each channel is used)."
    )


def _most_used(usage: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> float:
    """Share of the image's computed channels that are among each layer's k most used ones."""
    hits, total = 0, 0
    for name, m in masks.items():
        k = int(m.sum())
        top = set(np.argsort(-usage[name], kind="stable")[:k].tolist())
        hits += len(top & set(np.flatnonzero(m).tolist()))
        total += k
    return hits / total if total else float("nan")
